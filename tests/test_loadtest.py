"""`broadcast loadtest`: light viewers of a live stream get media, see a keyframe and
decrypt cleanly; URLs off this machine and unknown streams are refused in plain words."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket

from broadcast.api.metrics import METRICS
from broadcast.cli import main
from broadcast.loadtest.rtp_stats import (
    NACK_TRIES,
    LossRecovery,
    RtpCounter,
    generic_nack,
    rtp_payload,
)
from broadcast.loadtest.run import LoadtestError, run_loadtest
from broadcast.web_keys import REGISTRY
from tests.peers import publish


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_every_viewer_of_a_live_stream_gets_media_and_a_keyframe(
    server: TestServer, http: aiohttp.ClientSession, codec: str
) -> None:
    publisher = await publish(http, str(server.make_url("/whip/live")), video=codec)
    await publisher.wait_connected()
    result = await run_loadtest(
        str(server.make_url("/whep/live")), 3, 2.0, settle_s=1.0
    )
    assert (result.connected, result.failed) == (3, 0)
    assert result.viewers_with_media == 3
    assert result.keyframes == 3
    assert result.integrity_checked > 0
    assert result.integrity_failures == 0
    assert result.loss_percent == 0
    assert result.deleted == 3
    stream = server.app[REGISTRY].get("live")
    assert stream is not None and not stream.viewers
    await publisher.close()


async def test_an_unknown_stream_stops_the_run_with_the_servers_words(
    server: TestServer,
) -> None:
    with pytest.raises(LoadtestError, match="404: There is no stream 'nope'"):
        await run_loadtest(str(server.make_url("/whep/nope")), 5, 1.0)
    assert not server.app[REGISTRY].sessions


async def test_the_command_says_so_in_one_line(server: TestServer) -> None:
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcast",
        "loadtest",
        "--url",
        str(server.make_url("/whep/nope")),
        "--viewers",
        "2",
        "--duration",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await command.communicate()
    assert command.returncode == 1
    assert stdout == b""
    assert stderr.decode().count("\n") == 1
    assert "There is no stream 'nope'" in stderr.decode()


@pytest.mark.parametrize(
    "url", ["http://192.0.2.7:8080/whep/x", "http://example.com/whep/x"]
)
async def test_a_url_off_this_machine_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"this machine \(127.0.0.1"):
        await run_loadtest(url, 1, 1.0)


def test_the_command_refuses_a_url_off_this_machine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "loadtest",
                "--url",
                "http://192.0.2.7/whep/x",
                "--viewers",
                "1",
                "--duration",
                "1",
            ]
        )
    assert exit_.value.code == 2
    assert "must point at this machine" in capsys.readouterr().err


def test_rtp_payload_skips_csrcs_extension_and_padding() -> None:
    header = bytes([0xB1, 96]) + bytes(10)  # padding, extension, one CSRC
    csrc = bytes(4)
    extension = b"\xbe\xde\x00\x01" + bytes(4)
    packet = header + csrc + extension + b"payload" + b"\x00\x00\x03"
    assert rtp_payload(packet) == b"payload"


def test_loss_counts_across_the_sequence_wrap_and_forgives_reordering() -> None:
    counter = RtpCounter("video", 90000)
    for seq in (65534, 65535, 1, 0, 3):  # 0 comes late, 2 never
        counter.add(seq, 0, 100, 0, 0.0)
    assert (counter.expected, counter.packets) == (6, 5)


async def test_lossy_viewers_nack_the_gaps_and_the_server_fills_them(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    publisher = await publish(http, str(server.make_url("/whip/lossy")))
    await publisher.wait_connected()
    result = await run_loadtest(
        str(server.make_url("/whep/lossy")), 2, 3.0, settle_s=1.0, loss_percent=20
    )
    recovery = result.recovery
    assert recovery is not None
    assert recovery["dropped"] > 20
    assert recovery["nacks_sent"] > 0
    # Retransmissions are dropped too: some packets take two NACKs.
    assert recovery["recovered"] > 0.5 * recovery["dropped"]
    assert result.loss_percent < 5  # of 20 % dropped, NACKs got most back
    assert result.integrity_failures == 0
    counts = server.app[METRICS].counts()
    assert counts["nacks_received"] >= recovery["nacks_sent"] > 0
    assert counts["retransmissions"] >= recovery["recovered"]
    await publisher.close()


def test_recovery_nacks_gaps_across_the_wrap_then_gives_up() -> None:
    recovery = LossRecovery()
    for seq in (65534, 1, 65535):  # 0 lost, 65535 late
        assert recovery.add(seq, 0.0)
    assert recovery.add(65535, 0.0) is False  # a duplicate
    assert recovery.due(0.0) == ([0], 0)
    assert recovery.due(0.05) == ([], 0)  # not yet again
    for attempt in range(1, NACK_TRIES):
        assert recovery.due(attempt) == ([0], 0)
    assert recovery.due(100.0) == ([], 1)  # given up
    assert recovery.add(0, 101.0)  # still welcome late, once
    assert not recovery.add(0, 101.0)
    assert (recovery.recovered, recovery.given_up, recovery.duplicates) == (2, 1, 2)


def test_timestamp_wraps_are_seen_in_sequence_order() -> None:
    counter = RtpCounter("video", 90000)
    top = 2**32 - 3000
    for seq, ts in ((65535, top), (1, 2000), (0, top + 1000), (2, 5000)):
        counter.add(seq, ts, 100, 1, 0.0)
    assert counter.ts_wraps == 1
    assert counter.seq_wraps == 1
    assert (counter.min_ts_step, counter.max_ts_step) == (0, 5000)  # none backwards
    counter.add(3, 4000, 100, 1, 0.0)
    assert counter.min_ts_step == -1000


def test_a_nack_names_lost_packets_across_the_wrap() -> None:
    lost = [65530, 65535, 0, 3, 40]
    (packet,) = RtcpPacket.parse(generic_nack(1, 2, lost))
    assert isinstance(packet, RtcpRtpfbPacket)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc) == (RTCP_RTPFB_NACK, 1, 2)
    assert [seq & 0xFFFF for seq in packet.lost] == lost
