"""LayerChoice: the simulcast layer an `auto` viewer's network carries.

What the viewer tells us is loss: the packets it NACKs (within a round trip) and its
receiver reports' loss (about once a second). Down is quick: heavy loss (the viewer's
LayerSwitch asks as soon as NACKs show it, 0.2 s into a sample) or two lossy samples
in a row (1 s), straight to the best layer that fits what
got through (sent x (1 - loss)). Up is careful: one layer at a time, only after a
hold without loss since going down; a step up that had to be undone soon is tried
again only after a hold twice as long, up to MAX_HOLD_S; one that held is followed by
the next after CLIMB_HOLD_S. A layer the publisher stops is left at once for the next
smaller one that runs. Layers are numbered best first.

REMB is not used: without abs-send-time or transport-wide sequence numbers on what we
send, Chromium's REMB sat at 40-55 kbit/s while it received 130 kbit/s of video
cleanly, and a receiver's estimate never shows room above what it gets unless the
sender probes with padding, which we do not send.
"""

from __future__ import annotations

# A sample's loss above this counts toward going down...
DOWN_LOSS = 0.10
# ...once this many samples in a row say so, or at once above SEVERE_LOSS.
LOSSY_SAMPLES_DOWN = 2
SEVERE_LOSS = 0.3
# Heavy loss is seen as it starts (NACKs come after it): at least this share is taken
# as lost then, or the layer chosen fills the link again and a second step follows.
ONSET_LOSS = 0.5
# What got through is shared out with this margin: a layer that would fill the link
# would lose packets again at its next keyframe, and NACKs come a round trip after
# the loss, so a sample's loss is less than the link's.
FIT_MARGIN = 0.6
# Going up only after this long with every sample's loss below UP_LOSS...
UP_LOSS = 0.02
HOLD_S = 8.0
MAX_HOLD_S = 64.0
# ...or this long after a step up (the link carried it: try the next).
CLIMB_HOLD_S = 2.0
# Down again within this long of going up: the probe failed, the hold doubles. It
# is back to HOLD_S only after this long without a switch: a link just too narrow
# for the layer above, behind a deep buffer, loses only after a while, and a hold
# reset by each probe that lasted FAILED_PROBE_S would freeze it every 16 s.
FAILED_PROBE_S = 8.0
HOLD_RESET_S = 60.0


# What a viewer may ask for (`?quality=`): auto follows its network.
QUALITIES = ("auto", "high", "medium", "low")


def layer_index(quality: str, layers: int) -> int:
    """Which of `layers` simulcast layers (best first) `quality` names (auto: the
    best, where an auto viewer starts)."""
    return {"low": layers - 1, "medium": layers // 2}.get(quality, 0)


class LayerChoice:
    """One viewer's choice: feed it loss samples, ask it which layer at each tick."""

    def __init__(self, now: float) -> None:
        self._lossy_in_row = 0
        self._clean_since = now
        self._switched_at = now
        self._went_up_at: float | None = None
        self._hold = HOLD_S
        # bit/s that got through at the last lossy sample: what the link carried then
        self.estimate_bps: int | None = None
        self.reason = ""  # why it last moved, for the log

    @property
    def lossy(self) -> bool:
        """Whether the last sample lost more than a little."""
        return self._lossy_in_row > 0

    def loss(self, fraction: float, sent_bps: int, now: float) -> None:
        """Of what was sent (at `sent_bps`) over a while, `fraction` (0-1) was lost."""
        if fraction > DOWN_LOSS:
            severe = fraction > SEVERE_LOSS
            self._lossy_in_row = (
                LOSSY_SAMPLES_DOWN if severe else self._lossy_in_row + 1
            )
            lost = max(fraction, ONSET_LOSS) if severe else fraction
            self.estimate_bps = int(sent_bps * (1 - lost))
        else:
            self._lossy_in_row = 0
        if fraction >= UP_LOSS:
            self._clean_since = now

    def choose(self, current: int, rates: list[int], now: float) -> int:
        """The layer to be on, given each layer's rate (bit/s): `current`, a worse
        one, or the one above."""
        running = [i for i, rate in enumerate(rates) if rate > 0]
        if rates[current] <= 0 and running:
            # The publisher stopped its layer (a browser drops its largest one when
            # its own uplink narrows): the next smaller that runs, else the nearest.
            self.reason = "its layer stopped"
            smaller = [i for i in running if i > current]
            return self._went(smaller[0] if smaller else running[-1], now)
        if current < len(rates) - 1 and self._lossy_in_row >= LOSSY_SAMPLES_DOWN:
            if self._went_up_at is not None and now - self._went_up_at < FAILED_PROBE_S:
                self._hold = min(self._hold * 2, MAX_HOLD_S)  # the probe failed
            self._went_up_at = None
            room = (self.estimate_bps or 0) * FIT_MARGIN
            self.reason = f"loss: {self.estimate_bps} bit/s got through"
            smaller = [i for i in running if i > current]
            if not smaller:
                return current  # nothing smaller runs: better this than a freeze
            fits = [i for i in smaller if rates[i] <= room]
            return self._went(fits[0] if fits else smaller[-1], now)
        held = min(now - self._switched_at, now - self._clean_since)
        hold = CLIMB_HOLD_S if self._went_up_at is not None else self._hold
        # The better layer must be sending (a publisher may pause one).
        if current > 0 and rates[current - 1] > 0 and held >= hold:
            self._went_up_at = now
            self.reason = f"{held:.0f} s without loss"
            return self._went(current - 1, now)
        if self._went_up_at is not None and now - self._went_up_at > FAILED_PROBE_S:
            self._went_up_at = None  # that step up held
        if now - self._switched_at > HOLD_RESET_S:
            self._hold = HOLD_S  # long on one layer: the link may have changed
        return current

    def _went(self, layer: int, now: float) -> int:
        self._switched_at = now
        self._lossy_in_row = 0
        return layer
