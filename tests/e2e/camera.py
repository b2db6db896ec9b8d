"""A fake camera of a known native size for Chromium (`--use-file-for-fake-video-capture`)."""

from __future__ import annotations

from pathlib import Path

import numpy

FRAMES = 30
# The fake camera the browser tests publish from: 720p, the picture viewers must reach.
NATIVE = (1280, 720)


def write_y4m(path: Path, width: int, height: int, fps: int = 30) -> Path:
    """Write a looping moving-gradient clip as Y4M (4:2:0), Chromium's fake camera input."""
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        columns = numpy.arange(width, dtype=numpy.uint16)
        rows = numpy.arange(height, dtype=numpy.uint16)[:, None]
        for frame in range(FRAMES):
            luma = ((columns + rows + frame * 8) % 256).astype(numpy.uint8)
            chroma = numpy.full((height // 2, width // 2), 128 + frame, numpy.uint8)
            out.write(b"FRAME\n")
            out.write(luma.tobytes())
            out.write(chroma.tobytes())
            out.write(chroma[::-1].tobytes())
    return path
