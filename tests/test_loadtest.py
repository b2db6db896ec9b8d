"""`broadcast loadtest`: light viewers of a live stream get media, see a keyframe and
decrypt cleanly; URLs off this machine and unknown streams are refused in plain words."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broadcast.cli import main
from broadcast.loadtest import LoadtestError, RtpCounter, rtp_payload, run_loadtest
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
    assert not server.app[REGISTRY].get("live").viewers
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
