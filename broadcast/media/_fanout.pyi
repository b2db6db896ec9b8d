"""Types of the optional native extension `_fanout.c` (SRTP protect + sendmmsg)."""

from collections.abc import Sequence
from typing import Any

def send(fd: int, family: int, outbox: Sequence[tuple[bytes, tuple[Any, ...]]]) -> int:
    """Send queued datagrams with one `sendmmsg` per batch; the count sent."""

def fan_out(
    fd: int, family: int, protect: int, packet: bytes, targets: list[Any]
) -> tuple[int, int]:
    """Protect `packet` for every target and send them; (sent, refused by SRTP)."""
