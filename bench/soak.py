"""Soak: 1 publisher and 50 viewers for a long time, 5 % loss both ways, nothing leaks.

Run inside a network namespace holding only `lo` (all traffic stays on 127.0.0.1):

unshare -rn sh -c 'ip link set lo up && python bench/soak.py --minutes 10'

(`--minutes 1440` for a day.) `broadcast serve` runs as a subprocess under
`python -X dev -W error::ResourceWarning` (asyncio debug mode; an unclosed socket or
transport is an error); its stderr is kept and every Traceback, "Exception", "Task
exception was never retrieved" and ERROR line counted: there must be none.

* The publisher (this process) sends a 320x240 VP8 picture and an Opus tone, encoded
  by aiortc, so that it answers the server's NACKs (RTX) and PLIs (keyframes). Its RTP
  sequence numbers start at 65,000 and its timestamps `--wrap-after-s` before 2^32,
  so both wrap early in the run; 5 % of its RTP is dropped before SRTP (retransmissions
  too), so the server's upstream NACKs must fetch it back.
* 50 light viewers (`broadcast loadtest`'s, with `--loss`): each drops 5 % of the RTP
  it receives, NACKs the gaps (the server retransmits from its history) and sends a
  PLI for video it cannot recover; they check that sequence numbers and timestamps
  wrapped with no step back and no jump.
* Every `--sample-s` (30 s): the server's RSS, open fds, asyncio tasks and viewers
  (its /metrics), what the viewers received and what stayed lost after recovery,
  NACKs, retransmissions and PLIs on both sides.

Criteria (exit status 1 if one fails): no error in the server's stderr; 50 viewers
connected and receiving at every sample; RSS at most 10 % above the first sample after
warm-up; tasks and fds not growing over the run and back to their pre-join values once
the viewers have left; wraps seen with continuity; NACK, retransmission and PLI all
exercised, upstream and downstream; recovery leaves under a tenth of the loss missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import aiortc.rtcrtpsender
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
)
from aiortc.rtp import is_rtcp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fanout import CONFIG, free_port
from bench.media import whip_exchange
from bench.trend import Trend
from broadcast.loadtest.viewer import LatencySamples, Viewer
from tests.peers import MovingPicture, Tone

STREAM = "soak"
FIRST_SEQ = 65000
# What the server prints that counts as an error: none is allowed.
ERROR_LINE = re.compile(
    r"Traceback|Exception|Task exception was never retrieved|\bERROR\b|\bCRITICAL\b"
)
STATE = (
    "process_resident_memory_bytes",
    "process_open_fds",
    "broadcast_asyncio_tasks",
    "broadcast_viewers",
    "broadcast_event_loop_lag_seconds",
    "broadcast_nacks_received",
    "broadcast_retransmissions",
    "broadcast_plis_sent",
    "broadcast_rtp_packets_received",
)
RSS_GROWTH_LIMIT = 0.10


def start_near_the_wrap(lead_s: float) -> None:
    """aiortc 1.16's RTCRtpSender picks its first sequence number and timestamp origin
    in `_run_rtp` (random_sequence_number(), random32()): start at 65,000 and `lead_s`
    of the codec's clock before 2^32 instead. SSRCs (random32() in __init__) stay random.
    """
    module: Any = aiortc.rtcrtpsender
    random32 = module.random32

    def origin() -> int:
        caller = sys._getframe(1)
        codec = caller.f_locals.get("codec")
        if caller.f_code.co_name != "_run_rtp" or codec is None:
            return random32()
        return (2**32 - int(codec.clockRate * lead_s)) & 0xFFFFFFFF

    module.random_sequence_number = lambda: FIRST_SEQ
    module.random32 = origin


@dataclass
class ServerLog:
    """The server's stderr, kept in a file; error lines counted and the first kept."""

    path: Path
    lines: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)

    async def follow(self, stream: asyncio.StreamReader) -> None:
        with self.path.open("w") as log:
            while line := await stream.readline():
                text = line.decode(errors="replace")
                log.write(text)
                log.flush()
                self.lines += 1
                if ERROR_LINE.search(text):
                    self.errors += 1
                    if len(self.first_errors) < 20:
                        self.first_errors.append(text.rstrip())


@dataclass
class LossyPublisher:
    pc: RTCPeerConnection
    location: str
    sent: int = 0
    dropped: int = 0
    rtx: int = 0


async def publish(http: aiohttp.ClientSession, url: str, loss: float) -> LossyPublisher:
    """VP8 (+RTX) and Opus over WHIP; `loss` of the RTP dropped before SRTP."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(MovingPicture(), "sendonly")
    audio = pc.addTransceiver(Tone(), "sendonly")
    for transceiver, names in (
        (video, ("video/vp8", "video/rtx")),
        (audio, ("audio/opus",)),
    ):
        codecs = RTCRtpSender.getCapabilities(transceiver.kind).codecs
        transceiver.setCodecPreferences(
            [c for c in codecs if c.mimeType.lower() in names]
        )
    publisher = LossyPublisher(pc, await whip_exchange(http, url, pc))
    transport = video.sender.transport
    send = transport._send_rtp
    rtx_ssrc = video.sender._rtx_ssrc.to_bytes(4, "big")
    chance = random.Random(1)

    async def lossy_send(data: bytes) -> None:
        if not is_rtcp(data):
            publisher.sent += 1
            publisher.rtx += data[8:12] == rtx_ssrc
            if chance.random() < loss:
                publisher.dropped += 1
                return
        await send(data)

    transport._send_rtp = lossy_send  # type: ignore[method-assign]
    return publisher


async def server_state(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    state = {}
    for name, value in re.findall(r"^(\w+) (\S+)$", text, re.MULTILINE):
        name = name.removesuffix("_total")
        if name in STATE:
            state[name] = float(value)
    return state


@dataclass
class Totals:
    """Everything counted, at one moment: the server's and all the viewers'."""

    at: float
    server: dict[str, float]
    by_kind: dict[str, tuple[int, int]]
    with_media: set[int]
    recovery: dict[str, int]
    publisher: tuple[int, int, int]
    errors: int


def viewer_totals(
    crowd: list[Viewer],
) -> tuple[dict[str, tuple[int, int]], list[int], dict[str, int]]:
    """(packets, expected) by kind; packets by viewer; recovery counters summed."""
    by_kind = {"video": (0, 0), "audio": (0, 0)}
    per_viewer = []
    recovery: dict[str, int] = {}
    for viewer in crowd:
        for track in viewer.tracks.values():
            if track.kind in by_kind:
                packets, expected = by_kind[track.kind]
                by_kind[track.kind] = (
                    packets + track.packets,
                    expected + track.expected,
                )
        per_viewer.append(viewer.totals()[0])
        for key, value in viewer.recovery_totals().items():
            recovery[key] = recovery.get(key, 0) + value
    return by_kind, per_viewer, recovery


HEADER = (
    "    t   RSS MiB  fds  tasks  viewers  w/media  pkts/s   drop %  resid % v/a"
    "  NACKs v→s  retx  PLIs v/s→pub  pub drop/RTX  lag ms  errors"
)


def row(before: Totals, after: Totals, viewers: int, start: float) -> dict[str, Any]:
    s, b = after.server, before.server
    seconds = max(after.at - before.at, 0.001)
    residual = {}
    for kind, (packets, expected) in after.by_kind.items():
        packets -= before.by_kind[kind][0]
        expected -= before.by_kind[kind][1]
        residual[kind] = 100 * max(expected - packets, 0) / expected if expected else 0
    packets = sum(p for p, _ in after.by_kind.values()) - sum(
        p for p, _ in before.by_kind.values()
    )
    dropped = after.recovery["dropped"] - before.recovery["dropped"]
    arrived = packets + dropped
    return {
        "t_s": after.at - start,
        "rss_mib": s["process_resident_memory_bytes"] / 2**20,
        "fds": int(s["process_open_fds"]),
        "tasks": int(s["broadcast_asyncio_tasks"]),
        "viewers": int(s["broadcast_viewers"]),
        "with_media": len(after.with_media),
        "of": viewers,
        "packets_per_s": packets / seconds,
        "dropped_percent": 100 * dropped / arrived if arrived else 0.0,
        "video_packets": after.by_kind["video"][0] - before.by_kind["video"][0],
        "audio_packets": after.by_kind["audio"][0] - before.by_kind["audio"][0],
        "residual_video_percent": residual["video"],
        "residual_audio_percent": residual["audio"],
        "viewer_nacks": after.recovery["nacks_sent"] - before.recovery["nacks_sent"],
        "server_nacks": int(
            s["broadcast_nacks_received"] - b["broadcast_nacks_received"]
        ),
        "retransmissions": int(
            s["broadcast_retransmissions"] - b["broadcast_retransmissions"]
        ),
        "viewer_plis": after.recovery["plis_sent"] - before.recovery["plis_sent"],
        "server_plis": int(s["broadcast_plis_sent"] - b["broadcast_plis_sent"]),
        "publisher_dropped": after.publisher[1] - before.publisher[1],
        "publisher_rtx": after.publisher[2] - before.publisher[2],
        "lag_ms": 1000 * s.get("broadcast_event_loop_lag_seconds", 0.0),
        "errors": after.errors,
    }


def line(r: dict[str, Any]) -> str:
    return (
        f"{r['t_s']:>5.0f}  {r['rss_mib']:>8.1f}  {r['fds']:>3}  {r['tasks']:>5}"
        f"  {r['viewers']:>7}  {r['with_media']:>4}/{r['of']:<2}  {r['packets_per_s']:>6.0f}"
        f"  {r['dropped_percent']:>6.2f}  {r['residual_video_percent']:>5.3f}"
        f"/{r['residual_audio_percent']:<5.2f}"
        f"  {r['viewer_nacks']:>5}→{r['server_nacks']:<5}  {r['retransmissions']:>4}"
        f"  {r['viewer_plis']:>4}/{r['server_plis']:<3}→pub  "
        f"{r['publisher_dropped']:>5}/{r['publisher_rtx']:<5}  {r['lag_ms']:>6.0f}"
        f"  {r['errors']:>6}"
    )


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.checks: list[tuple[str, bool, str]] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    async def run(self, directory: str) -> int:
        args = self.args
        config = os.path.join(directory, "flashphoner.xml")
        Path(config).write_text(CONFIG.format(workers=args.workers))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "dev",
            "-W",
            "error::ResourceWarning",
            "-m",
            "broadcast",
            "serve",
            "--config",
            config,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--workers",
            str(args.workers),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert server.stderr is not None
        self.log = ServerLog(
            Path(args.server_log or os.path.join(directory, "server.log"))
        )
        follower = asyncio.create_task(self.log.follow(server.stderr))
        # The server and its worker children, from /proc: /metrics is the main one's.
        self.trend = Trend(server.pid, Path(args.samples) if args.samples else None)
        try:
            async with aiohttp.ClientSession() as http:
                await self.wait_healthy(http, base)
                await self.soak(http, base)
        finally:
            if server.returncode is None:
                server.terminate()
            code = await server.wait()
            await follower
            self.trend.close()
        self.check("server exits cleanly", code == 0, f"exit status {code}")
        self.check(
            "no error in the server's stderr",
            self.log.errors == 0,
            f"{self.log.errors} error lines in {self.log.lines} ({self.log.path})",
        )
        return self.summary()

    async def wait_healthy(self, http: aiohttp.ClientSession, base: str) -> None:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("the server did not start")

    def totals(
        self, state: dict[str, float], crowd: list[Viewer], publisher: LossyPublisher
    ) -> Totals:
        by_kind, per_viewer, recovery = viewer_totals(crowd)
        previous = getattr(self, "_per_viewer", [0] * len(crowd))
        self._per_viewer = per_viewer
        with_media = {
            i
            for i, (a, b) in enumerate(zip(previous, per_viewer, strict=True))
            if b > a
        }
        return Totals(
            time.monotonic(),
            state,
            by_kind,
            with_media,
            recovery,
            (publisher.sent, publisher.dropped, publisher.rtx),
            self.log.errors,
        )

    async def soak(self, http: aiohttp.ClientSession, base: str) -> None:
        args = self.args
        loss = args.loss / 100
        publisher = await publish(http, f"{base}/whip/{STREAM}", loss)
        deadline = time.monotonic() + 10
        while publisher.pc.connectionState != "connected":
            if time.monotonic() > deadline:
                raise RuntimeError(f"publisher {publisher.pc.connectionState}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        pre_join = await server_state(http, base)
        print(
            f"before the viewers join: tasks {pre_join['broadcast_asyncio_tasks']:.0f},"
            f" fds {pre_join['process_open_fds']:.0f},"
            f" RSS {pre_join['process_resident_memory_bytes'] / 2**20:.1f} MiB",
            flush=True,
        )
        certificate = RTCCertificate.generateCertificate()
        url = f"{base}/whep/{STREAM}"
        crowd = [
            Viewer(url, "127.0.0.1", certificate, LatencySamples(), loss)
            for _ in range(args.viewers)
        ]
        viewers_http = aiohttp.ClientSession()

        async def join(viewer: Viewer, delay: float) -> None:
            await asyncio.sleep(delay)
            await asyncio.wait_for(viewer.join(viewers_http, time.monotonic() + 15), 15)

        joined = await asyncio.gather(
            *(join(v, i * 0.04) for i, v in enumerate(crowd)), return_exceptions=True
        )
        failures = [repr(j) for j in joined if isinstance(j, BaseException)]
        self.check(
            f"{args.viewers} viewers join",
            not failures,
            f"{args.viewers - len(failures)} joined"
            + (f": {failures[:3]}" if failures else ""),
        )
        start = time.monotonic()
        end = start + 60 * args.minutes
        warm_up = min(args.warm_up_s, 60 * args.minutes / 3)
        print(
            f"{args.viewers} viewers joined; sampling every {args.sample_s:g} s for"
            f" {args.minutes:g} min, RSS baseline: the first sample after {warm_up:g} s\n"
            f"{HEADER}",
            flush=True,
        )
        rows: list[dict[str, Any]] = []
        first = previous = self.totals(await server_state(http, base), crowd, publisher)
        self.trend.sample(0.0, first.server["broadcast_asyncio_tasks"])
        while time.monotonic() < end:
            await asyncio.sleep(min(args.sample_s, max(end - time.monotonic(), 0.1)))
            now = self.totals(await server_state(http, base), crowd, publisher)
            self.trend.sample(now.at - start, now.server["broadcast_asyncio_tasks"])
            rows.append(row(previous, now, args.viewers, start))
            print(line(rows[-1]), flush=True)
            previous = now
        total = row(first, previous, args.viewers, start)
        self.judge_run(rows, total, crowd, warm_up, publisher)

        # The viewers leave; the server must get back to where it was before they came.
        deleted = sum(await asyncio.gather(*(v.close(viewers_http) for v in crowd)))
        await viewers_http.close()
        after: dict[str, float] = {}
        for _ in range(300):
            after = await server_state(http, base)
            if (
                after["broadcast_viewers"] == 0
                and after["broadcast_asyncio_tasks"]
                <= pre_join["broadcast_asyncio_tasks"]
                and after["process_open_fds"] <= pre_join["process_open_fds"]
            ):
                break
            await asyncio.sleep(0.2)
        self.check(
            "viewers' sessions deleted",
            deleted == args.viewers and after["broadcast_viewers"] == 0,
            f"{deleted} DELETEs answered, {after['broadcast_viewers']:.0f} viewers left",
        )
        for name, what in (
            ("broadcast_asyncio_tasks", "tasks"),
            ("process_open_fds", "fds"),
        ):
            self.check(
                f"{what} back to the pre-join value",
                after[name] <= pre_join[name],
                f"{pre_join[name]:.0f} before joining, {after[name]:.0f} after leaving",
            )
        self.after = after
        self.pre_join = pre_join
        async with http.delete(f"{base}{publisher.location}"):
            pass
        await publisher.pc.close()

    def judge_run(
        self,
        rows: list[dict[str, Any]],
        total: dict[str, Any],
        crowd: list[Viewer],
        warm_up: float,
        publisher: LossyPublisher,
    ) -> None:
        self.total = total
        self.rows = rows
        self.warm_up = warm_up
        self.recovery = viewer_totals(crowd)[2]
        if not rows:
            self.check("samples taken", False, "the run was too short to sample")
            return
        bad = [r for r in rows if r["viewers"] != r["of"] or r["with_media"] != r["of"]]
        # Audio alone keeps every viewer "receiving": the video is checked by itself.
        silent = [r for r in rows if not r["video_packets"] or not r["audio_packets"]]
        self.check(
            "video and audio reach the viewers at every sample",
            not silent,
            f"{len(rows)} samples"
            + (
                f"; one missing at t={[round(r['t_s']) for r in silent]}"
                if silent
                else ""
            ),
        )
        self.check(
            "all viewers connected and receiving at every sample",
            not bad,
            f"{len(rows)} samples"
            + (f"; short at t={[round(r['t_s']) for r in bad]}" if bad else ""),
        )
        baseline = next((r for r in rows if r["t_s"] >= warm_up), rows[-1])
        later = [r for r in rows if r["t_s"] >= baseline["t_s"]]
        peak = max(r["rss_mib"] for r in later)
        growth = peak / baseline["rss_mib"] - 1
        self.check(
            "RSS growth after warm-up < 10 %",
            growth < RSS_GROWTH_LIMIT,
            f"{baseline['rss_mib']:.1f} MiB at {baseline['t_s']:.0f} s, peak {peak:.1f},"
            f" last {rows[-1]['rss_mib']:.1f} MiB ({100 * growth:+.1f} % at the peak)",
        )
        for key, slack in (("tasks", 5), ("fds", 2)):
            start, last = baseline[key], rows[-1][key]
            self.check(
                f"{key} steady while viewers watch",
                last <= start + slack,
                f"{start} after warm-up, {last} at the end,"
                f" {min(r[key] for r in later)}-{max(r[key] for r in later)}",
            )
        self.check(
            "NACKs: viewers send, server receives and retransmits",
            total["viewer_nacks"] > 0
            and total["server_nacks"] >= total["viewer_nacks"] * 0.99
            and total["retransmissions"] > 0,
            f"{total['viewer_nacks']} sent, {total['server_nacks']} received,"
            f" {total['retransmissions']} retransmitted",
        )
        self.check(
            "PLIs: viewers send, server asks the publisher",
            total["viewer_plis"] > 0 and total["server_plis"] > 0,
            f"{total['viewer_plis']} from viewers, {total['server_plis']} to the publisher",
        )
        self.check(
            "upstream: the server NACKs the publisher's losses, RTX answers",
            publisher.dropped > 0 and total["publisher_rtx"] > 0,
            f"{publisher.dropped} of {publisher.sent} dropped, {publisher.rtx} RTX sent",
        )
        limit = self.args.loss / 10
        self.check(
            f"video: residual loss after recovery < {limit:g} %",
            total["residual_video_percent"] < limit,
            f"{total['residual_video_percent']:.4f} % missing, of"
            f" {total['dropped_percent']:.2f} % dropped at the viewers and"
            f" {self.args.loss:g} % at the publisher",
        )
        # Audio lost upstream stays lost: the server NACKs only video upstream (as
        # browsers do; Opus has no NACK in its SDP). Downstream audio is recovered.
        upstream = 100 * publisher.dropped / max(publisher.sent, 1)
        self.check(
            f"audio: residual loss < upstream loss + {limit:g} %",
            total["residual_audio_percent"] < upstream + limit,
            f"{total['residual_audio_percent']:.3f} % missing; the publisher's drops"
            f" ({upstream:.2f} % of its RTP) are not NACKed upstream for audio",
        )
        wraps = self.wraps(crowd)
        self.check(
            "sequence numbers and timestamps wrapped, continuously",
            wraps["both"] > 0 and wraps["backward"] == 0 and wraps["max_step_s"] < 1,
            f"{wraps['both']} of {len(crowd)} viewers saw both wrap on audio and video;"
            f" first seq {wraps['first_seq']}, widest timestamp step"
            f" {1000 * wraps['max_step_s']:.0f} ms, {wraps['backward']} steps back",
        )
        self.wrap_info = wraps
        failed = sum(v.integrity_failures for v in crowd)
        self.check(
            "sampled packets decrypt",
            failed == 0,
            f"{failed} failures in {sum(v.checked for v in crowd)} decrypted",
        )

    @staticmethod
    def wraps(crowd: list[Viewer]) -> dict[str, Any]:
        both = backward = 0
        max_step_s = 0.0
        first_seq: set[int] = set()
        for viewer in crowd:
            tracks = [t for t in viewer.tracks.values() if t.kind in ("audio", "video")]
            if len(tracks) == 2 and all(t.seq_wraps and t.ts_wraps for t in tracks):
                both += 1
            for track in tracks:
                # Packets of one video frame share a timestamp: 0 is not a step back.
                backward += track.min_ts_step < 0
                max_step_s = max(max_step_s, track.max_ts_step / track.clock_rate)
                first_seq.add(track.base & 0xFFFF)
        return {
            "both": both,
            "backward": backward,
            "max_step_s": max_step_s,
            "first_seq": f"{min(first_seq)}-{max(first_seq)}" if first_seq else "-",
        }

    def summary(self) -> int:
        total = getattr(self, "total", None)
        print()
        if total is not None:
            print("whole run\n" + HEADER + "\n" + line(total))
        recovery = getattr(self, "recovery", None)
        if recovery is not None:
            print(
                "viewers: {dropped:,} packets dropped, {nacks_sent:,} NACKs for"
                " {nacked:,} packets, {recovered:,} recovered, {given_up:,} given up,"
                " {duplicates:,} duplicates, {plis_sent} PLIs".format(**recovery)
            )
        trend = getattr(self, "trend", None)
        if trend is not None:
            print(trend.report(getattr(self, "warm_up", 0.0)))
        print(
            f"\nserver stderr: {self.log.lines} lines, {self.log.errors} errors"
            f" ({self.log.path})"
        )
        for text in self.log.first_errors:
            print(f"  {text}")
        print("\ncriteria")
        for name, ok, detail in self.checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
        failed = [name for name, ok, _ in self.checks if not ok]
        print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all criteria pass'}")
        return 1 if failed else 0


async def main(args: argparse.Namespace) -> int:
    aioice.ice.get_host_addresses = lambda **_: ["127.0.0.1"]
    start_near_the_wrap(args.wrap_after_s)
    with tempfile.TemporaryDirectory() as directory:
        return await Soak(args).run(directory)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="1440 for a day")
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--loss", type=float, default=5.0, help="percent, both ways")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument(
        "--warm-up-s", type=float, default=60.0, help="before the RSS baseline"
    )
    parser.add_argument(
        "--wrap-after-s",
        type=float,
        default=15.0,
        help="the publisher's timestamps start this long before 2^32",
    )
    parser.add_argument("--server-log", help="keep the server's stderr in this file")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes carrying viewers (0: a core each)",
    )
    parser.add_argument(
        "--samples", help="write RSS/fds/tasks of each server process here (JSON lines)"
    )
    args = parser.parse_args()
    args.minutes = min(max(args.minutes, 0.5), 1440.0)
    args.viewers = min(max(args.viewers, 1), 200)
    args.workers = min(max(args.workers, 0), 256)
    args.loss = min(max(args.loss, 0.0), 50.0)
    args.sample_s = min(max(args.sample_s, 5.0), 600.0)
    args.wrap_after_s = min(max(args.wrap_after_s, 1.0), 600.0)
    sys.exit(asyncio.run(main(args)))
