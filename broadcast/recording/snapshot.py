"""Snapshots: the latest keyframe of a stream's GOP cache, decoded to one JPEG.

The only decoding the server does for video, so it is kept cheap and off the event
loop: one keyframe (not the GOP after it), in a thread, at most once a second per
stream, and not again while the keyframe is the same (a camera's GOP lasts seconds).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
from aiohttp import web
from av.video.reformatter import ColorRange

from broadcast.errors import BadRequest, NotFound
from broadcast.media.source_track import SourceTrack
from broadcast.recording.frames import DEPACKETIZERS, rtp_payload, rtp_seq
from broadcast.stream import Stream

SNAPSHOT_INTERVAL_S = 1.0
MIN_WIDTH, MAX_WIDTH = 16, 3840
# JPEGs kept per keyframe, one per width asked: thumbnails and a full size or two.
MAX_WIDTHS_KEPT = 4

# The FFmpeg decoder of each codec a snapshot is made of.
_DECODERS: dict[str, Literal["h264", "vp8"]] = {
    "video/h264": "h264",
    "video/vp8": "vp8",
}


def parse_width(raw: str | None) -> int | None:
    """`?width=`: None keeps the stream's size."""
    if raw is None:
        return None
    if not raw.isdigit() or not MIN_WIDTH <= int(raw) <= MAX_WIDTH:
        raise BadRequest(
            "bad_width",
            f"width must be a whole number from {MIN_WIDTH} to {MAX_WIDTH}.",
        )
    return int(raw)


def keyframe_packets(gop: list[bytes]) -> list[bytes]:
    """The packets of the GOP's first frame (its keyframe), in sequence order and
    each once: a late or retransmitted packet is not where it belongs in the GOP."""
    first_seq = rtp_seq(gop[0])
    by_offset = {
        (rtp_seq(packet) - first_seq) & 0xFFFF: packet
        for packet in gop
        if packet[4:8] == gop[0][4:8]
    }
    return [by_offset[offset] for offset in sorted(by_offset)]


def decode_keyframe(mime_type: str, gop: list[bytes]) -> av.VideoFrame | None:
    """The GOP's keyframe as a picture; None for another codec or a keyframe that
    does not decode (a packet of it lost)."""
    decoder = _DECODERS.get(mime_type.lower())
    if decoder is None or not gop:
        return None
    depacketize = DEPACKETIZERS[mime_type.lower()]
    try:
        frame = b"".join(
            depacketize(rtp_payload(packet)) for packet in keyframe_packets(gop)
        )
        codec = av.CodecContext.create(decoder, "r")
        pictures = codec.decode(av.Packet(frame)) + codec.decode(None)
    except (ValueError, av.FFmpegError):
        return None
    return pictures[0] if pictures else None


def encode_jpeg(picture: av.VideoFrame, width: int | None) -> bytes:
    """One JPEG, `width` wide (the picture's own by default) at the picture's aspect."""
    width = width or picture.width
    height = max(1, round(width * picture.height / picture.width))
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.color_range = ColorRange.JPEG  # full range, as JPEG viewers expect
    codec.time_base = Fraction(1, 1)
    scaled = picture.reformat(width, height, "yuv420p", dst_color_range=ColorRange.JPEG)
    return b"".join(
        bytes(packet) for packet in codec.encode(scaled) + codec.encode(None)
    )


@dataclass
class _Shot:
    """One decode of a track's keyframe and the JPEGs made from it."""

    keyframe: bytes  # its first packet's sequence number and timestamp
    taken_at: float
    picture: av.VideoFrame | None
    jpegs: dict[int | None, bytes] = field(default_factory=dict)


class Snapshots:
    """The snapshots of this process's streams, one decode per stream at most once a
    second (held by the video track, forgotten with it)."""

    def __init__(self) -> None:
        self._shots: weakref.WeakKeyDictionary[SourceTrack, _Shot] = (
            weakref.WeakKeyDictionary()
        )
        self._locks: weakref.WeakKeyDictionary[SourceTrack, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self.decodes = 0

    async def jpeg(self, stream: Stream, width: int | None) -> bytes:
        track = stream.tracks.get("video")
        if track is None:
            raise _no_keyframe(stream, "has no video")
        # One request decodes, those arriving meanwhile take its picture.
        async with self._locks.setdefault(track, asyncio.Lock()):
            shot = await self._shot(track)
            if shot is None:
                raise _no_keyframe(stream, "has had no keyframe yet")
            if shot.picture is None:
                raise _no_keyframe(stream, "has a keyframe that did not decode")
            if width not in shot.jpegs:
                if len(shot.jpegs) >= MAX_WIDTHS_KEPT:
                    shot.jpegs.clear()
                shot.jpegs[width] = await asyncio.to_thread(
                    encode_jpeg, shot.picture, width
                )
            return shot.jpegs[width]

    async def _shot(self, track: SourceTrack) -> _Shot | None:
        """The last decode if it is under a second old or of the same keyframe, else
        a new one; None while there is no keyframe."""
        gop = list(track.gop)  # the event loop replaces and extends it meanwhile
        if not gop:
            return None
        shot = self._shots.get(track)
        now = time.monotonic()
        keyframe = gop[0][2:8]
        if shot is not None and (
            shot.keyframe == keyframe or now - shot.taken_at < SNAPSHOT_INTERVAL_S
        ):
            return shot
        self.decodes += 1
        picture = await asyncio.to_thread(decode_keyframe, track.codec.mimeType, gop)
        shot = self._shots[track] = _Shot(keyframe, now, picture)
        return shot


def _no_keyframe(stream: Stream, why: str) -> NotFound:
    return NotFound("no_keyframe", f"Stream '{stream.id}' {why}: no snapshot to show.")


SNAPSHOTS = web.AppKey("snapshots", Snapshots)
