"""AAC (from a camera) to Opus (for browsers): the one place we transcode.

Browsers cannot play AAC over WebRTC. Cameras send it as RTP `mpeg4-generic`
(RFC 3640, AAC-hbr): we take the access units out, decode them, and encode 20 ms Opus
frames at 48 kHz, with PyAV (ffmpeg) doing the codec work.
"""

from __future__ import annotations

import fractions
import logging

import av
import av.error

logger = logging.getLogger(__name__)

OPUS_RATE = 48000
OPUS_FRAME_SAMPLES = 960  # 20 ms, what browsers send and expect
OPUS_BITRATE = 64000


def split_access_units(
    payload: bytes, size_length: int, index_length: int
) -> list[bytes]:
    """The AAC frames of one RFC 3640 payload (§3.2.1 AU headers, §3.3.6 AAC-hbr)."""
    if len(payload) < 2:
        return []
    headers_bits = int.from_bytes(payload[:2], "big")
    header_bits = size_length + index_length
    headers_bytes = (headers_bits + 7) // 8
    if header_bits <= 0 or 2 + headers_bytes > len(payload):
        return []
    headers = int.from_bytes(payload[2 : 2 + headers_bytes], "big")
    count = headers_bits // header_bits
    units = []
    offset = 2 + headers_bytes
    for n in range(count):
        shift = headers_bytes * 8 - (n + 1) * header_bits
        size = (headers >> (shift + index_length)) & ((1 << size_length) - 1)
        if offset + size > len(payload):
            break
        units.append(payload[offset : offset + size])
        offset += size
    return units


class AacToOpus:
    """Decode a camera's AAC access units; encode Opus frames of 20 ms."""

    def __init__(self, config_hex: str, size_length: int = 13, index_length: int = 3):
        self._size_length = size_length
        self._index_length = index_length
        self._decoder = av.CodecContext.create("aac", "r")
        self._decoder.extradata = bytes.fromhex(config_hex)
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=OPUS_RATE
        )
        self._encoder = av.CodecContext.create("libopus", "w")
        self._encoder.sample_rate = OPUS_RATE
        self._encoder.layout = "stereo"
        self._encoder.format = "s16"
        self._encoder.bit_rate = OPUS_BITRATE
        self._encoder.time_base = fractions.Fraction(1, OPUS_RATE)
        self._fifo = av.AudioFifo()
        self._pts = 0
        self.failed_units = 0

    def push(self, payload: bytes) -> list[bytes]:
        """One RTP payload of AAC in, the Opus frames that are ready out."""
        out: list[bytes] = []
        for unit in split_access_units(payload, self._size_length, self._index_length):
            try:
                frames = self._decoder.decode(av.Packet(unit))
            except av.error.FFmpegError:
                self.failed_units += 1  # a damaged frame costs 20-60 ms of sound
                continue
            for frame in frames:
                for resampled in self._resampler.resample(frame):
                    self._fifo.write(resampled)
            while self._fifo.samples >= OPUS_FRAME_SAMPLES:
                chunk = self._fifo.read(OPUS_FRAME_SAMPLES)
                if chunk is None:
                    break
                chunk.pts = self._pts
                self._pts += OPUS_FRAME_SAMPLES
                out.extend(bytes(p) for p in self._encoder.encode(chunk))
        return out
