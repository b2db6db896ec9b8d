"""OriginPull: an edge's stream, pulled over WHEP from the node that owns it.

One upstream session per stream per edge, whatever its audience here: the edge fans the
stream out with the same hot path as a local publisher (GOP cache, NACK answers from its
own history, keyframe requests merged into one PLI upstream). The upstream session is a
`Publisher` the edge itself started (it offers, the origin answers): its RTP goes to the
stream's source tracks, its NACKs, reports and PLIs to the origin.

The pull is the stream's source for as long as it has viewers here, and `linger_s` more
after the last one leaves; while the origin is away (its publisher dropped, the origin
died) the stream is `reconnecting` and the pull retries, asking where the stream is
published now each time (`locate`), so viewers resume wherever the publisher returns.
Once no node has published it for `gone_after_s` (the grace period a publisher has to
come back), the broadcast is over: the pull ends the stream here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from urllib.parse import urljoin

import aiohttp
from aiortc import sdp as aiortc_sdp

from broadcast.media.host import MediaHost
from broadcast.media.source_track import SourceTrack
from broadcast.media.upstream import BandwidthEstimate, UpstreamTrack
from broadcast.publisher import Publisher
from broadcast.signaling.sdp import build_offer, usable_candidates
from broadcast.source import Source, SourceOwner, SourceUnavailable

logger = logging.getLogger(__name__)

# Our own infrastructure: retry soon, and never wait long (viewers are waiting).
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
# How long a first viewer waits for the pull to bring media.
READY_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 5.0
RELAY_HEADER = "Broadcast-Relay"
SECRET_HEADER = "Broadcast-Cluster-Secret"
# The origin has no bandwidth to estimate for us: ask for everything it sends.
RELAY_BITRATE_BPS = 100_000_000


class PullError(SourceUnavailable):
    """A pull attempt failed; the message is safe to show a viewer."""

    code = "origin_unavailable"


class OriginPull:
    """A stream's source on an edge: its origin's stream, pulled over WHEP."""

    kind = "relay"
    record_from_start = False
    # The stream lives while the pull does: it retries by itself, and ends the stream
    # once nobody has watched for `linger_s`.
    permanent = True

    def __init__(
        self,
        stream: SourceOwner,
        media: MediaHost,
        locate: Callable[[], Awaitable[str | None]],
        node_id: str,
        secret: Callable[[], str | None],
        linger_s: float,
        silence_timeout_s: float,
        gone_after_s: float,
    ) -> None:
        self.id = secrets.token_urlsafe(16)
        self.stream = stream
        self.pull_url: str | None = None  # the origin's WHEP URL, once located
        self.bitrate_in_bps = 0
        self._media = media
        self._locate = locate
        self._node_id = node_id
        self._secret = secret
        self._linger_s = linger_s
        self._silence_timeout_s = silence_timeout_s
        self._gone_after_s = gone_after_s
        # Since when no node publishes the stream (the cluster or the origin says so).
        self._unpublished_since: float | None = None
        self._session: Publisher | None = None
        self._session_url: str | None = None
        self._live = asyncio.Event()
        self._failures: list[
            asyncio.Future[object]
        ] = []  # viewers waiting, told at once
        self._lost = asyncio.Event()  # the current upstream session ended
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None
        self._ended_counts: Counter[str] = Counter()
        self._closed = False

    def __repr__(self) -> str:
        return f"OriginPull({self.stream.id} from {self.pull_url})"

    # --- Source ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run())
            self.viewers_changed(len(self.stream.viewers))

    async def wait_ready(self) -> None:
        """Wait until media flows; fail at the first failed attempt."""
        self.start()
        if self._live.is_set():
            return
        failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._failures.append(failed)
        live: asyncio.Future[object] = asyncio.ensure_future(self._live.wait())
        try:
            done, _ = await asyncio.wait(
                {live, failed},
                timeout=READY_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            live.cancel()
            if failed in self._failures:
                self._failures.remove(failed)
        if failed in done:
            failed.result()  # raises the attempt's PullError
        if not done:
            raise PullError(f"no media from the origin within {READY_TIMEOUT_S:.0f} s")

    def viewers_changed(self, count: int) -> None:
        """Nobody watches: let go after `linger_s`; somebody does: keep pulling."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if count == 0 and not self._closed:
            self._linger = asyncio.get_running_loop().call_later(
                self._linger_s, self._let_go
            )

    def _let_go(self, reason: str = "no viewers", cause: str = "idle") -> None:
        # Held here: the loop keeps only a weak reference to a task.
        self._closing = asyncio.ensure_future(self.close(reason, cause))

    def source_counters(self) -> dict[str, int]:
        counts = Counter(self._ended_counts)
        if self._session is not None:
            counts.update(self._session.counters())
        return dict(counts)

    async def close(self, reason: str, cause: str) -> None:
        if self._closed:
            return
        self._closed = True
        logger.info("%r stopped: %s", self, reason)
        if self._linger is not None:
            self._linger.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._hang_up()
        self.stream.source_ended(self)

    # --- the pull ----------------------------------------------------------------------

    def upstream_live(self) -> None:
        self._live.set()
        self.stream.source_live(self)

    def upstream_lost(self) -> None:
        self._lost.set()

    async def _run(self) -> None:
        wait = RETRY_MIN_S
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        ) as http:
            while not self._closed:
                try:
                    await self._pull(http)
                    wait = RETRY_MIN_S  # it ran: the next attempt starts afresh
                    problem = "the origin went away"
                except PullError as error:
                    problem = str(error)
                    for waiter in self._failures:
                        if not waiter.done():
                            waiter.set_exception(PullError(problem))
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    problem = f"cannot reach the origin: {type(error).__name__}"
                    for waiter in self._failures:
                        if not waiter.done():
                            waiter.set_exception(PullError(problem))
                self._live.clear()
                if self._gone():
                    self._let_go("the stream ended on every node", "ended")
                    return
                self.stream.source_lost(self, problem)
                logger.info("%r: %s; again in %.1f s", self, problem, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX_S)

    async def _pull(self, http: aiohttp.ClientSession) -> None:
        """One upstream session, from the offer until it ends."""
        origin = await self._locate()
        if origin is None:
            raise self._unpublished("the stream is not published on any node now")
        self.pull_url = f"{origin}/whep/{self.stream.id}"
        transport = self._media.transport(f"relay {self.stream.id}")
        try:
            await transport.gather()
            offer = build_offer(
                transport.local_ice,
                transport.local_candidates,
                transport.local_fingerprints,
            )
            answer_text = await self._post(http, offer)
            answer = _parse_answer(answer_text)
            session = Publisher(
                _Upstream(self),
                transport,
                answer.ice.usernameFragment or "",
                [self._upstream_track(m) for m in answer.accepted],
                BandwidthEstimate(RELAY_BITRATE_BPS, RELAY_BITRATE_BPS),
                self._silence_timeout_s,
            )
        except BaseException:
            await transport.close()
            await self._hang_up()  # an answer we could not use: end it there too
            raise
        self._session = session
        self._lost.clear()
        for track in self.stream.tracks.values():
            track.upstream_changed()
        transport.start(
            answer.ice,
            answer.candidates,
            answer.fingerprints,
            True,
            answer.dtls_role,
            offerer=True,
        )
        try:
            await self._lost.wait()
        finally:
            self._ended_counts.update(session.counters())
            await session.close("pull ended", "transport")
            self._session = None
            await self._hang_up()

    async def _post(self, http: aiohttp.ClientSession, offer: str) -> str:
        secret = self._secret()
        if secret is None:
            raise PullError("the cluster's secret is not known yet (is Redis up?)")
        assert self.pull_url is not None
        headers = {
            "Content-Type": "application/sdp",
            RELAY_HEADER: self._node_id,
            SECRET_HEADER: secret,
        }
        async with http.post(
            self.pull_url, data=offer, headers=headers, allow_redirects=False
        ) as response:
            body = await response.text()
            if response.status == 404:
                raise self._unpublished("the stream is not on its origin now")
            if response.status != 201:
                raise PullError(f"the origin answered {response.status}: {body[:200]}")
            self._unpublished_since = None
            self._session_url = urljoin(self.pull_url, response.headers["Location"])
            return body

    def _unpublished(self, problem: str) -> PullError:
        """No node publishes the stream: the clock of `_gone` starts (if not yet)."""
        if self._unpublished_since is None:
            self._unpublished_since = time.monotonic()
        return PullError(problem)

    def _gone(self) -> bool:
        """Unpublished for longer than a publisher has to come back: it ended."""
        since = self._unpublished_since
        return since is not None and time.monotonic() - since > self._gone_after_s

    def _upstream_track(self, media: aiortc_sdp.MediaDescription) -> UpstreamTrack:
        """This m-line's source track (made at the first pull), fed by the pull."""
        codec = media.rtp.codecs[0]
        source = self.stream.tracks.get(media.kind)
        if source is None:
            source = SourceTrack(media.kind, codec)
            self.stream.tracks[media.kind] = source
        ssrcs = tuple(s.ssrc for s in media.ssrc[:1])
        return UpstreamTrack(source, int(codec.payloadType or 0), None, ssrcs)

    async def _hang_up(self) -> None:
        """DELETE the upstream session, best effort (the origin may be gone)."""
        url, self._session_url = self._session_url, None
        if url is None:
            return
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=2)
            ) as http:
                async with http.delete(url) as response:
                    await response.read()


class _Upstream:
    """The stream as the upstream session sees it (its `SourceOwner`): its tracks and
    audience are the stream's; what happens to the session, the pull hears."""

    def __init__(self, pull: OriginPull) -> None:
        self.pull = pull
        self.id = pull.stream.id
        self.tracks = pull.stream.tracks  # the same dict: tracks made here are its

    @property
    def viewers(self) -> Collection[object]:
        return self.pull.stream.viewers

    def source_live(self, source: Source) -> None:
        self.pull.upstream_live()

    def source_lost(self, source: Source, problem: str | None) -> None:
        self.pull.upstream_lost()

    def source_idle(self, source: Source) -> None:
        """Not for an upstream session."""

    def source_ended(self, source: Source) -> None:
        self.pull.upstream_lost()


class _Answer:
    """The origin's answer: its transport parameters and the m-lines it sends."""

    def __init__(self, description: aiortc_sdp.SessionDescription) -> None:
        media = [m for m in description.media if m.kind in ("audio", "video")]
        first = media[0]
        assert first.ice is not None and first.dtls is not None
        self.ice = first.ice
        self.candidates = usable_candidates(c for m in media for c in m.ice_candidates)
        self.fingerprints = first.dtls.fingerprints
        # The origin answers passive (it is the DTLS server): we are the client.
        self.dtls_role = "server" if first.dtls.role == "client" else "client"
        self.accepted = [
            m
            for m in media
            if m.port and m.rtp.codecs and m.direction in ("sendonly", "sendrecv")
        ]


def _parse_answer(text: str) -> _Answer:
    try:
        answer = _Answer(aiortc_sdp.SessionDescription.parse(text))
    except Exception as error:  # noqa: BLE001 - aiortc raises whatever it trips on
        raise PullError(f"the origin's answer cannot be read: {error!r}") from None
    if not answer.accepted:
        raise PullError("the origin sends nothing this edge can forward")
    return answer
