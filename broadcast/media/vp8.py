"""The picture ids of the VP8 payload descriptor (RFC 7741 §4.2), read and shifted.

A viewer switched between simulcast layers must see picture ids and TL0PICIDX go on
by one, as from one encoder: a jump tells its decoder frames were lost.
"""

from __future__ import annotations

from typing import NamedTuple

PICTURE_ID_MODULUS = 1 << 15


class PictureIds(NamedTuple):
    picture_id: int | None  # 7 or 15 bits, as the sender wrote it
    tl0_index: int | None  # TL0PICIDX, with temporal layers


def _fields(payload: bytes | bytearray, start: int) -> tuple[int, int, int]:
    """Offsets of the picture id and TL0PICIDX (-1: absent), and the id's width."""
    if len(payload) < start + 2 or not payload[start] & 0x80:  # no extension byte
        return -1, -1, 0
    flags = payload[start + 1]
    at = start + 2
    picture, width = -1, 0
    if flags & 0x80:  # I: a picture id
        if len(payload) <= at:
            return -1, -1, 0
        picture, width = at, 15 if payload[at] & 0x80 else 7
        at += 2 if width == 15 else 1
    tl0 = at if flags & 0x40 and len(payload) > at else -1  # L: TL0PICIDX
    return picture, tl0, width


def picture_ids(packet: bytes | bytearray, start: int = 12) -> PictureIds:
    """The ids of the descriptor at `start` (a packet's payload)."""
    picture, tl0, width = _fields(packet, start)
    picture_id = None
    if picture >= 0 and len(packet) > picture + (width == 15):
        if width == 15:
            picture_id = ((packet[picture] & 0x7F) << 8) | packet[picture + 1]
        else:
            picture_id = packet[picture] & 0x7F
    return PictureIds(picture_id, packet[tl0] if tl0 >= 0 else None)


def shift_picture_ids(
    packet: bytearray, picture_shift: int, tl0_shift: int, start: int = 12
) -> None:
    """Add the shifts to the ids in place, each modulo its field's width."""
    picture, tl0, width = _fields(packet, start)
    if picture >= 0 and width == 15 and len(packet) > picture + 1:
        value = (
            ((packet[picture] & 0x7F) << 8 | packet[picture + 1]) + picture_shift
        ) & 0x7FFF
        packet[picture] = 0x80 | value >> 8
        packet[picture + 1] = value & 0xFF
    elif picture >= 0 and width == 7:
        packet[picture] = (packet[picture] + picture_shift) & 0x7F
    if tl0 >= 0:
        packet[tl0] = (packet[tl0] + tl0_shift) & 0xFF
