"""Stream events for the web client: state changes and viewer counts, by stream id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Listener = Callable[[Event], None]


class StreamEvents:
    """Deliver each stream's events to whoever listens to that stream id.

    Listening does not need the stream to exist: a viewer page may wait for a
    broadcast that has not started yet.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        self._all: set[Listener] = set()

    def listen(self, stream_id: str, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for events of `stream_id`; returns the way to stop."""
        self._listeners.setdefault(stream_id, set()).add(listener)

        def stop() -> None:
            listeners = self._listeners.get(stream_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[stream_id]

        return stop

    def listen_all(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for every stream's events (recording, the console)."""
        self._all.add(listener)
        return lambda: self._all.discard(listener)

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners.get(event["stream"], ())):
            listener(event)
        self.announce(event)

    def announce(self, event: Event) -> None:
        """Deliver `event` to `listen_all` listeners only (the back-end hooks): an
        event per viewer joining would double what every page of the stream gets."""
        for listener in list(self._all):
            listener(event)


def state_event(stream_id: str, state: str, problem: str | None = None) -> Event:
    """A stream's state; `problem` says why a camera stream is reconnecting."""
    event: Event = {"type": "state", "stream": stream_id, "state": state}
    if problem:
        event["problem"] = problem
    return event


def viewers_event(stream_id: str, count: int) -> Event:
    return {"type": "viewers", "stream": stream_id, "count": count}


def viewer_event(stream_id: str, session_id: str, joined: bool) -> Event:
    """One viewer session here joined or left (not sent to pages: `announce`)."""
    change = "joined" if joined else "left"
    return {
        "type": "viewer",
        "stream": stream_id,
        "event": change,
        "session": session_id,
    }


# A presenter's camera and microphone, on unless its page says otherwise.
PRESENTER_MEDIA_ON = {"camera": True, "microphone": True}


def presenter_event(stream_id: str, media: dict[str, bool]) -> Event:
    """The presenter turned its camera or microphone off or on (the broadcast goes on:
    viewers get black or silence, and their page says why)."""
    return {"type": "presenter", "stream": stream_id, **media}
