"""One recording file: whole frames remuxed with PyAV, never decoded or re-encoded.

H.264 (with Opus) goes to fragmented MP4, VP8 or Opus alone to WebM; both are written
as fragments (clusters) of at most a second that reach the file as they close, so a
server killed mid-recording leaves a file that plays up to about a second before.
Timestamps come from RTP: a publisher's outage is a gap in the file, not squeezed out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
from av.container import OutputContainer
from av.stream import Stream as AvStream
from av.video.stream import VideoStream

from broadcast.recording.frames import Frame

# Fragment length: at most this much of a recording is lost to a SIGKILL (plus the
# queue of a few packets): the muxers close a fragment this often and flush it.
FRAGMENT_US = 1_000_000
# The muxer holds a track's packets this long at most for the other track's to
# interleave with (FFmpeg's default is 10 s: that much could be lost to a kill).
MAX_INTERLEAVE_US = 500_000
H264_SPS, H264_PPS = 7, 8
_START_CODE = re.compile(b"\x00\x00\x00?\x01")

# The container each codec pair goes to, and its file extension.
_MP4_VIDEO = {"video/h264"}
_WEBM_VIDEO = {"video/vp8"}
_FORMATS = {
    "mp4": (
        "mp4",
        {
            "movflags": "frag_keyframe+empty_moov+default_base_moof",
            "frag_duration": str(FRAGMENT_US),
        },
    ),
    "webm": ("webm", {"cluster_time_limit": str(FRAGMENT_US // 1000)}),
}
_CODEC_NAMES = {"video/h264": "h264", "video/vp8": "vp8", "audio/opus": "opus"}
_MIME_TYPES = {"h264": "video/H264", "vp8": "video/VP8", "opus": "audio/opus"}


def mime_type(kind: str, codec_name: str) -> str:
    """A file's codec named as the API names a stream's (`video/H264`)."""
    return _MIME_TYPES.get(codec_name, f"{kind}/{codec_name}")


@dataclass(frozen=True)
class TrackSpec:
    """What a file needs to know of one track of the stream."""

    kind: str  # "video" | "audio"
    mime_type: str
    clock_rate: int
    channels: int = 2


def container_for(tracks: list[TrackSpec]) -> str | None:
    """`mp4` or `webm` (the file extension), or None when nothing can be recorded."""
    video = {t.mime_type.lower() for t in tracks if t.kind == "video"}
    if video & _MP4_VIDEO:
        return "mp4"
    if video & _WEBM_VIDEO or any(t.mime_type.lower() == "audio/opus" for t in tracks):
        return "webm"
    return None


def h264_parameter_sets(annex_b: bytes) -> bytes | None:
    """The SPS and PPS of an H.264 keyframe (Annex B): the MP4 track's avcC."""
    units = [unit for unit in _START_CODE.split(annex_b) if unit]
    sets = [unit for unit in units if unit[0] & 0x1F in (H264_SPS, H264_PPS)]
    if {unit[0] & 0x1F for unit in sets} != {H264_SPS, H264_PPS}:
        return None
    return b"".join(b"\x00\x00\x00\x01" + unit for unit in sets)


def opus_head(channels: int) -> bytes:
    """RFC 7845 §5.1 identification header (no pre-skip: we start mid-stream)."""
    return (
        b"OpusHead"
        + bytes([1, channels])
        + (0).to_bytes(2, "little")
        + (48000).to_bytes(4, "little")
        + bytes(3)
    )


class _Timeline:
    """One track's RTP timestamps as the file's timestamps: zero is the file's first
    frame, the track's first frame placed by when it came, RTP time after that."""

    def __init__(self, clock_rate: int, file_start: float, first: Frame) -> None:
        self._start = round((first.arrived_at - file_start) * clock_rate)
        self._first = first.timestamp
        self._extended = 0  # RTP timestamp unwrapped, from the first
        self._last = first.timestamp
        self.last_pts = -1

    def pts(self, frame: Frame) -> int:
        self._extended += (frame.timestamp - self._last) & 0xFFFFFFFF
        self._last = frame.timestamp
        return self._start + self._extended


@dataclass
class _Track:
    spec: TrackSpec
    stream: AvStream
    timeline: _Timeline | None = None


class RecordingFile:
    """A file being written, opened at a video keyframe (or at the first audio frame
    of a stream without video)."""

    def __init__(self, path: Path, tracks: list[TrackSpec], first: Frame) -> None:
        extension = path.suffix.lstrip(".")
        muxer, options = _FORMATS[extension]
        self.path = path
        self.started_at = first.arrived_at  # monotonic seconds: the file's zero
        self.codecs = [spec.mime_type for spec in tracks]
        self.duration_s = 0.0
        self._container: OutputContainer = av.open(
            str(path),
            "w",
            format=muxer,
            options={
                **options,
                "max_interleave_delta": str(MAX_INTERLEAVE_US),
                "flush_packets": "1",
            },
        )
        try:
            self._tracks = {spec.kind: self._add_stream(spec, first) for spec in tracks}
        except BaseException:
            self._container.close()
            raise

    def _add_stream(self, spec: TrackSpec, first: Frame) -> _Track:
        name = _CODEC_NAMES[spec.mime_type.lower()]
        if spec.kind == "video":
            video = cast(VideoStream, self._container.add_stream(name))
            if first.resolution is not None:
                video.codec_context.width, video.codec_context.height = first.resolution
            if name == "h264":
                video.codec_context.extradata = h264_parameter_sets(first.data)
            stream: AvStream = video
        else:
            stream = self._container.add_stream(name, rate=spec.clock_rate)
            stream.codec_context.extradata = opus_head(spec.channels)
        stream.time_base = Fraction(1, spec.clock_rate)
        return _Track(spec, stream)

    def write(self, kind: str, frame: Frame) -> bool:
        """Add one frame; False if it falls before the file's start or behind its
        track's last frame (so timestamps only ever grow)."""
        track = self._tracks.get(kind)
        if track is None:
            return False
        if track.timeline is None:
            track.timeline = _Timeline(track.spec.clock_rate, self.started_at, frame)
        pts = track.timeline.pts(frame)
        if pts <= track.timeline.last_pts or pts < 0:
            return False
        track.timeline.last_pts = pts
        packet = av.Packet(frame.data)
        packet.stream = track.stream
        packet.pts = packet.dts = pts
        packet.time_base = Fraction(1, track.spec.clock_rate)
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        self.duration_s = max(self.duration_s, pts / track.spec.clock_rate)
        return True

    def close(self) -> None:
        """Finish the file (its index, for seeking); the file stays if this fails."""
        self._container.close()
