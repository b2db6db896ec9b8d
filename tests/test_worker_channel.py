"""The sockets between the main process and a worker, on their own: what crosses,
what is refused alone, and what never blocks or is lost."""

from __future__ import annotations

import asyncio
import socket

import pytest

from broadcast.errors import ServiceUnavailable
from broadcast.workers import channel
from broadcast.workers.channel import ControlChannel, RemoteError
from broadcast.workers.pool import WorkerPool, WorkerProcess


async def handle(method: str, arguments: dict) -> object:
    if method == "echo":
        return arguments["value"]
    if method == "refuse":  # __init__ takes (code, message, headers): will not load
        raise ServiceUnavailable("busy", "try later")
    if method == "fail":
        raise OSError("no port")
    if method == "hang":
        await asyncio.sleep(60)
    raise ValueError(method)


@pytest.fixture
async def channels():
    (ours, packets), (theirs, their_packets) = channel.socket_pairs()
    lost: list[str] = []
    notices: list[object] = []
    near = ControlChannel(ours, handle, lambda m, a: None, lambda: lost.append("near"))
    far = ControlChannel(
        theirs, handle, lambda m, a: notices.append(a), lambda: lost.append("far")
    )
    yield near, far, lost, notices
    near.close()
    far.close()
    packets.close()
    their_packets.close()


async def test_calls_answer_and_exceptions_cross_as_themselves(channels):
    near, _, lost, _ = channels
    assert await near.call("echo", value={"a": [1, 2]}) == {"a": [1, 2]}
    with pytest.raises(OSError, match="no port"):
        await near.call("fail")
    with pytest.raises(RemoteError, match="ServiceUnavailable"):
        await near.call("refuse")  # pickles, but would not unpickle: sent as text
    assert await near.call("echo", value=1) == 1, "the channel survived"
    assert lost == []


async def test_a_message_too_large_is_dropped_alone(channels):
    near, _, lost, notices = channels
    near.tell("big", blob=b"x" * (2 << 20))  # over any SOCK_SEQPACKET buffer
    near.tell("small", n=1)
    assert await near.call("echo", value=2) == 2
    assert notices == [{"n": 1}] and lost == []


async def test_a_call_that_is_never_answered_times_out(channels):
    near, _, _, _ = channels
    with pytest.raises(TimeoutError):
        await near.call("hang", timeout=0.2)


async def test_closing_fails_pending_calls(channels):
    near, _, _, _ = channels
    pending = asyncio.ensure_future(near.call("hang"))
    await asyncio.sleep(0.05)
    near.close()
    with pytest.raises(ConnectionError):
        await pending


async def test_a_gop_burst_reaches_the_worker_whole_and_in_order():
    """2,000 packets at once into a small socket buffer: what does not fit waits for
    the socket (in order), instead of being dropped as the socket fills."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    ours.setblocking(False)
    theirs.setblocking(False)
    worker = WorkerProcess(1, WorkerPool())
    worker.packets = ours
    sent = [i.to_bytes(4, "big") + bytes(1200) for i in range(2000)]
    for message in sent:
        worker._send_packet(message)
    assert worker._backlog, "the burst did not fill the buffer: the test proves nothing"
    received: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(received) < len(sent):
        try:
            received.append(theirs.recv(4096))
        except BlockingIOError:
            await asyncio.sleep(0.001)  # the writer callback refills the socket
            assert loop.time() < deadline, f"stuck at {len(received)} packets"
    assert received == sent
    assert worker.packets_dropped == 0
    loop.remove_writer(ours)
    ours.close()
    theirs.close()
