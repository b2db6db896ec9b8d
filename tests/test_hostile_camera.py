"""Hostile IP cameras (issue #9): a fake RTSP server that breaks the protocol on purpose.

Each test points a camera stream at `FakeCamera`, an asyncio TCP server on 127.0.0.1 that
answers the way a `behaviour` tells it (malformed or huge SDP, endless headers, lying
Content-Length, garbage, endless 401, a trickle, a connection cut mid-answer, the wrong
CSeq), varying its misbehaviour from one connection attempt to the next. Meanwhile a
healthy WHIP publisher streams to a WHEP viewer on another stream of the same server.
Each attack must leave:

* the server serving: /healthz answers promptly, the event loop never stalls;
* the camera's stream `reconnecting` with a clear problem text (never its credentials),
  no "failed unexpectedly" (every misbehaviour is named, not just survived);
* the pull retried with the capped backoff (attempts counted and spaced at the camera);
* memory bounded: huge inputs refused early (the camera cannot even send them);
* the healthy viewer missing no RTP packet (sequence numbers consecutive throughout).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broadcast.ingest import rtsp
from broadcast.web_keys import REGISTRY
from tests.peers import Peer, Viewer, publish, recvonly_offer, wait_for, watch

ADMIN = {"Authorization": "Bearer k"}
SECRET = "s3cr3t-pass"
RETRY_MIN_S, RETRY_MAX_S = 0.2, 0.4  # backoff in these tests: 0.2, 0.4, 0.4, ...
REQUEST_TIMEOUT_S = 1.0
HUGE = 10 * 1024 * 1024
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=fake\r\nt=0 0\r\n"
    b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    b"a=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\na=control:track1\r\n"
)


# --- the fake camera ---------------------------------------------------------------


@dataclass
class Request:
    method: str
    cseq: int
    headers: dict[str, str]


@dataclass
class Attempt:
    """One connection from the server: when it came and went, what it asked."""

    started: float
    ended: float | None = None
    methods: list[str] = field(default_factory=list)
    sent: int = 0  # bytes the camera got out before the server hung up


class Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        attempt: Attempt,
    ) -> None:
        self.reader, self.writer, self.attempt = reader, writer, attempt

    async def request(self) -> Request:
        """The next request (interleaved data from the server skipped)."""
        while (first := await self.reader.readexactly(1)) == b"$":
            size = int.from_bytes((await self.reader.readexactly(3))[1:], "big")
            await self.reader.readexactly(size)
        head = (first + await self.reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.attempt.methods.append(lines[0].split()[0])
        return Request(lines[0].split()[0], int(headers["cseq"]), headers)

    async def send(self, data: bytes, pace_s: float = 0.0) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.attempt.sent += len(data)
        if pace_s:
            await asyncio.sleep(pace_s)

    async def answer(
        self,
        request: Request,
        status: str = "200 OK",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        cseq: object = None,
    ) -> None:
        await self.send(response(request, status, headers, body, cseq))

    async def play_along(self, request: Request, after: str = "") -> None:
        """Answer requests as a good camera would, up to and including `after`."""
        while True:
            await self.answer(request, **good_answer(request))
            if request.method == after:
                return
            request = await self.request()


def response(
    request: Request,
    status: str = "200 OK",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    cseq: object = None,
) -> bytes:
    lines = [f"RTSP/1.0 {status}", f"CSeq: {request.cseq if cseq is None else cseq}"]
    headers = dict(headers or {})
    if body and "Content-Length" not in headers:
        headers["Content-Length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def good_answer(request: Request) -> dict[str, Any]:
    if request.method == "OPTIONS":
        return {"headers": {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN"}}
    if request.method == "DESCRIBE":
        return {"headers": {"Content-Type": "application/sdp"}, "body": SDP}
    if request.method == "SETUP":
        transport = request.headers["transport"]
        return {"headers": {"Transport": transport, "Session": "12345678;timeout=60"}}
    return {"headers": {"Session": "12345678"}}


Behaviour = Callable[[Connection, int], Awaitable[None]]


class FakeCamera:
    """An RTSP server on 127.0.0.1 that runs `behaviour(connection, attempt_number)`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.attempts: list[Attempt] = []
        self.open = 0
        self.most_open = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        attempt = Attempt(time.monotonic())
        self.attempts.append(attempt)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.behaviour(
                    Connection(reader, writer, attempt), len(self.attempts) - 1
                )
                # Done misbehaving: wait for the server to hang up.
                while await reader.read(65536):
                    pass
        finally:
            attempt.ended = time.monotonic()
            self.open -= 1
            writer.close()
            self._handlers.discard(task)


# --- misbehaviours ------------------------------------------------------------------


async def malformed_sdp(conn: Connection, n: int) -> None:
    bodies = [
        b"this is not an SDP at all",
        b"v=0\r\nm=video\r\nm=video x y z\r\nm=\r\na=rtpmap:\r\na=fmtp:96\r\n",
        b"\xff\xfe\x00\x80 not UTF-8 \xc3\x28\r\nm=video 0 RTP/AVP 96\xff\r\n",
        b"m=audio 0 RTP/AVP 8\r\n",  # no video at all
    ]
    request = await conn.request()
    await conn.play_along(request, after="OPTIONS")
    request = await conn.request()
    await conn.answer(
        request, headers={"Content-Type": "application/sdp"}, body=bodies[n % 4]
    )


async def huge_sdp(conn: Connection, n: int) -> None:
    await conn.play_along(await conn.request(), after="OPTIONS")
    request = await conn.request()
    head = response(request, headers={"Content-Length": str(HUGE)})
    await conn.send(head)
    chunk = (b"a=x-junk:" + b"z" * 1014 + b"\r\n") * 64  # 64 KiB of SDP lines
    while conn.attempt.sent < HUGE:
        await conn.send(chunk, pace_s=0.005)


async def huge_headers(conn: Connection, n: int) -> None:
    request = await conn.request()
    await conn.send(f"RTSP/1.0 200 OK\r\nCSeq: {request.cseq}\r\n".encode())
    if n % 2:  # one header line that never ends
        chunk = b"X-Junk: " + b"z" * 65528
    else:  # header after header, never the blank line that ends them
        chunk = b"X-Junk: zzzzzzzz\r\n" * 3641
    while conn.attempt.sent < HUGE:
        await conn.send(chunk, pace_s=0.005)


async def wrong_content_length(conn: Connection, n: int) -> None:
    await conn.play_along(await conn.request(), after="OPTIONS")
    request = await conn.request()
    length = ["20", str(len(SDP) + 5000), "-5", "lots", "1e3", " "][n % 6]
    headers = {"Content-Type": "application/sdp", "Content-Length": length}
    await conn.answer(request, headers=headers, body=SDP)


def junk_frames(count: int) -> bytes:
    """`$`-framed junk on every channel: empty, short and not-RTP payloads."""
    frames = []
    for i in range(count):
        payload = bytes((i * 7 + j) & 0xFF for j in range(i % 40))
        frames.append(b"$" + bytes([i % 256]) + len(payload).to_bytes(2, "big"))
        frames.append(payload)
    return b"".join(frames)


async def garbage(conn: Connection, n: int) -> None:
    request = await conn.request()
    if n % 2 == 0:  # non-RTSP bytes between two answers
        await conn.play_along(request, after="OPTIONS")
        await conn.send(b"HTTP/1.1 200 OK\r\n\x00\x01\x02 garbage " * 10)
        request = await conn.request()
        await conn.answer(request, **good_answer(request))
        return
    # $-framed junk before every answer, a good session, then a flood and garbage
    while True:
        await conn.send(junk_frames(300) + b"\r\n" * 50)
        await conn.answer(request, **good_answer(request))
        if request.method == "PLAY":
            break
        request = await conn.request()
    flood = junk_frames(256) * 40 + b"\r\n" * 100_000  # 2.5 MB of tiny frames, CRLFs
    await conn.send(flood)
    await conn.send(b"\x17\x03\x03 this is not RTSP at all, nor interleaved data")


async def endless_401(conn: Connection, n: int) -> None:
    challenges = [
        {"WWW-Authenticate": f'Digest realm="cam", nonce="{n}{time.time()}"'},
        {"WWW-Authenticate": 'Basic realm="cam"'},
        {},  # 401 without saying how to authenticate
        {"WWW-Authenticate": "Digest garbage, more garbage"},
        {"WWW-Authenticate": 'Digest realm="cam", nonce="1", algorithm=BOGUS'},
    ]
    while True:
        await conn.answer(
            await conn.request(), "401 Unauthorized", challenges[n % len(challenges)]
        )


async def trickle(conn: Connection, n: int) -> None:
    request = await conn.request()
    for byte in response(request, **good_answer(request)):
        await conn.send(bytes([byte]), pace_s=0.1)


async def close_mid_response(conn: Connection, n: int) -> None:
    if n % 3 == 0:  # in the middle of the status line
        request = await conn.request()
        await conn.send(response(request)[:12])
    elif n % 3 == 1:  # in the middle of the SDP
        await conn.play_along(await conn.request(), after="OPTIONS")
        request = await conn.request()
        await conn.send(response(request, **good_answer(request))[:-40])
    else:  # as soon as asked
        await conn.request()
    conn.writer.close()


async def wrong_cseq(conn: Connection, n: int) -> None:
    while True:
        request = await conn.request()
        await conn.answer(
            request,
            cseq=[request.cseq + 1000, request.cseq - 1, 0, "x"][n % 4],
            **good_answer(request),
        )


# --- the harness --------------------------------------------------------------------


@dataclass
class Healthy:
    """A WHIP publisher and a WHEP viewer on stream `good`."""

    server: TestServer
    http: aiohttp.ClientSession
    publisher: Peer
    viewer: Viewer

    def video(self) -> tuple[list[int], list[float]]:
        ssrc = max(
            self.viewer.received.packets,
            key=lambda s: len(self.viewer.received.packets[s]),
        )
        packets = self.viewer.received.packets[ssrc]
        return [p.sequence_number for p in packets], self.viewer.received.arrival[ssrc]


@pytest.fixture
async def healthy(make_server, http, monkeypatch) -> AsyncIterator[Healthy]:
    monkeypatch.setattr("broadcast.ingest.camera.RETRY_MIN_S", RETRY_MIN_S)
    monkeypatch.setattr("broadcast.ingest.camera.RETRY_MAX_S", RETRY_MAX_S)
    monkeypatch.setattr(rtsp, "REQUEST_TIMEOUT_S", REQUEST_TIMEOUT_S)
    server = await make_server(admin_key="k")
    publisher = await publish(http, str(server.make_url("/whip/good")), audio=None)
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/good")), ("video",))
    await viewer.wait_connected()
    healthy = Healthy(server, http, publisher, viewer)
    await wait_for(lambda: viewer.received.packets and len(healthy.video()[0]) >= 20)
    yield healthy
    await viewer.close()
    await publisher.close()


@dataclass
class Watch:
    """What the server looked like from outside while it was under attack."""

    healthz_s: list[float] = field(default_factory=list)
    loop_lag_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    states: set[str] = field(default_factory=set)


async def watch_server(healthy: Healthy, stream_ids: list[str], into: Watch) -> None:
    registry = healthy.server.app[REGISTRY]

    async def healthz() -> None:
        while True:
            asked = time.monotonic()
            async with healthy.http.get(healthy.server.make_url("/healthz")) as r:
                assert r.status == 200
            into.healthz_s.append(time.monotonic() - asked)
            await asyncio.sleep(0.1)

    async def loop_lag() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            into.loop_lag_s.append(time.monotonic() - before - 0.02)

    async def states() -> None:
        while True:
            for stream_id in stream_ids:
                stream = registry.get(stream_id)
                if stream is not None:
                    into.states.add(stream.state)
                    if stream.problem and stream.problem not in into.problems:
                        into.problems.append(stream.problem)
            await asyncio.sleep(0.01)

    await asyncio.gather(healthz(), loop_lag(), states())


async def add_camera(healthy: Healthy, stream_id: str, url: str) -> None:
    async with healthy.http.post(
        healthy.server.make_url("/api/cameras"),
        json={"id": stream_id, "url": url, "always_on": True},
        headers=ADMIN,
    ) as r:
        assert r.status == 201, await r.text()


async def remove_camera(healthy: Healthy, stream_id: str) -> None:
    async with healthy.http.delete(
        healthy.server.make_url(f"/api/cameras/{stream_id}"), headers=ADMIN
    ) as r:
        assert r.status == 200, await r.text()


def expected_delays(camera: FakeCamera) -> list[float]:
    """The waits after each attempt: doubling up to the cap, from the start once played."""
    delays, delay = [], RETRY_MIN_S
    for attempt in camera.attempts:
        if "PLAY" in attempt.methods:
            delay = RETRY_MIN_S
        delays.append(delay)
        delay = min(delay * 2, RETRY_MAX_S)
    return delays


def check_backoff(camera: FakeCamera) -> None:
    """Attempts follow each other no sooner than the backoff says, and not much later."""
    starts = [a.started for a in camera.attempts]
    ends = [a.ended for a in camera.attempts]
    for i, delay in enumerate(expected_delays(camera)[:-1]):
        spacing = starts[i + 1] - starts[i]
        assert spacing >= delay * 0.9, f"attempt {i + 2} after {spacing:.2f} s"
        ended = ends[i]
        assert ended is not None, f"attempt {i + 1} still open at attempt {i + 2}"
        # Generous: the retry comes within a few seconds of giving up.
        assert starts[i + 1] - ended <= delay + 3.0, f"attempt {i + 2} late"


def check_healthy(healthy: Healthy, since: float, until: float) -> None:
    """The healthy viewer got every packet, in order, all through the attack."""
    numbers, arrivals = healthy.video()
    window = [
        (n, t) for n, t in zip(numbers, arrivals, strict=True) if since <= t <= until
    ]
    assert len(window) >= 10 * (until - since), "the healthy viewer starved"
    first = arrivals.index(window[0][1])
    numbers = numbers[max(first - 1, 0) : first + len(window)]
    gaps = [(a, b) for a, b in itertools.pairwise(numbers) if (b - a) & 0xFFFF != 1]
    assert not gaps, f"healthy viewer lost or reordered packets: {gaps[:5]}"
    times = [t for _, t in window]
    longest = max(b - a for a, b in itertools.pairwise(times))
    assert longest < 1.0, f"the healthy viewer got nothing for {longest:.2f} s"


async def attack(
    healthy: Healthy,
    behaviour: Behaviour,
    problem: str,
    attempts: int = 4,
    credentials: str = "",
) -> tuple[FakeCamera, Watch]:
    """Point camera stream `cam` at a fake camera behaving badly; check the server."""
    camera = FakeCamera(behaviour)
    await camera.start()
    seen = Watch()
    monitor = asyncio.ensure_future(watch_server(healthy, ["cam"], seen))
    since = time.monotonic()
    try:
        url = f"rtsp://{credentials}127.0.0.1:{camera.port}/stream?channel=1"
        await add_camera(healthy, "cam", url)
        stream = healthy.server.app[REGISTRY].get("cam")
        assert stream is not None
        await wait_for(
            lambda: len(camera.attempts) > attempts and stream.state == "reconnecting",
            timeout=30,
            message=f"{len(camera.attempts)} attempts, problems {seen.problems}",
        )
        await asyncio.sleep(0.3)
        assert not monitor.done(), monitor.exception()
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
    until = time.monotonic()
    await remove_camera(healthy, "cam")
    # Let go for good: no connection left behind, no retry after removal.
    await wait_for(lambda: camera.open == 0, timeout=5, message="connection kept")
    count = len(camera.attempts)
    await asyncio.sleep(RETRY_MAX_S * 2)
    assert len(camera.attempts) == count, "the camera was retried after removal"
    await camera.close()

    print(
        f"{behaviour.__name__}: {count} attempts, problems {seen.problems},"
        f" /healthz max {max(seen.healthz_s) * 1000:.0f} ms,"
        f" loop lag max {max(seen.loop_lag_s) * 1000:.0f} ms,"
        f" sent per attempt {[a.sent for a in camera.attempts]}"
    )
    assert seen.states >= {"reconnecting"}
    assert seen.problems and all(re.search(problem, p) for p in seen.problems), (
        seen.problems
    )
    assert not any(SECRET in p or "admin" in p for p in seen.problems)
    assert camera.most_open == 1, "attempts overlapped"
    check_backoff(camera)
    assert max(seen.healthz_s) < 1.0, "/healthz was slow during the attack"
    assert max(seen.loop_lag_s) < 0.5, "the event loop stalled during the attack"
    check_healthy(healthy, since, until)
    return camera, seen


@pytest.fixture
def no_surprises(caplog):
    """Every misbehaviour is named: no 'failed unexpectedly', no traceback, no secret."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert "failed unexpectedly" not in caplog.text
    assert "Traceback" not in caplog.text
    assert SECRET not in caplog.text


# --- the attacks --------------------------------------------------------------------


async def test_malformed_sdp(healthy, no_surprises):
    await attack(healthy, malformed_sdp, r"no audio or video track|no video track")


async def test_huge_sdp_is_refused_not_buffered(healthy, no_surprises):
    camera, _ = await attack(healthy, huge_sdp, r"too large.*64 KiB")
    # The server hung up after the limit: the camera could not even send 10 MB.
    assert all(a.sent < 2 * 1024 * 1024 for a in camera.attempts)


async def test_endless_headers_are_refused_not_buffered(healthy, no_surprises):
    camera, _ = await attack(healthy, huge_headers, r"more than 64 KiB of headers")
    assert all(a.sent < 2 * 1024 * 1024 for a in camera.attempts)


async def test_wrong_content_length(healthy, no_surprises):
    _, seen = await attack(
        healthy,
        wrong_content_length,
        r"malformed|negative Content-Length|did not answer DESCRIBE|no audio or video",
        attempts=6,
    )
    assert any("malformed" in p for p in seen.problems)
    assert any("did not answer DESCRIBE" in p for p in seen.problems)  # too long


async def test_interleaved_garbage(healthy, no_surprises):
    _, seen = await attack(healthy, garbage, r"malformed")
    assert "live" in seen.states  # $-framed junk alone did not stop the session


async def test_endless_401_never_leaks_credentials(healthy, no_surprises):
    await attack(
        healthy, endless_401, r"\(401\)", attempts=5, credentials=f"admin:{SECRET}@"
    )
    async with healthy.http.get(
        healthy.server.make_url("/api/streams"), headers=ADMIN
    ) as r:
        assert SECRET not in await r.text()


async def test_slow_trickle_times_out(healthy, no_surprises):
    await attack(healthy, trickle, r"did not answer OPTIONS within", attempts=2)


async def test_connection_closed_mid_response(healthy, no_surprises):
    await attack(healthy, close_mid_response, r"closed the connection")


async def test_wrong_cseq(healthy, no_surprises):
    _, seen = await attack(healthy, wrong_cseq, r"wrong CSeq|malformed", attempts=4)
    assert any("wrong CSeq" in p for p in seen.problems)


# --- the limits, without a network --------------------------------------------------


class _Transport:
    """Enough of an asyncio transport for a connection fed by hand."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)  # never sent: the "camera" reads nothing

    def get_write_buffer_size(self) -> int:
        return self.written

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "data,problem",
    [
        (
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n" + b"X-Junk: zzzzzzzz\r\n" * (HUGE // 18),
            "headers",
        ),
        (b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nX-Junk: " + b"z" * HUGE, "headers"),
        (
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: %d\r\n\r\n" % HUGE
            + b"a=x\r\n" * (HUGE // 5),
            "too large",
        ),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n" * (HUGE // 32), "does not read"),
    ],
    ids=["header-lines", "one-header-line", "body", "requests-unread"],
)
async def test_ten_megabytes_are_refused_early(data, problem):
    """The connection gives up within the limit (plus one read), never buffering all."""
    connection = rtsp._GuardedConnection("127.0.0.1", 9, timeout=1)
    transport = _Transport()
    connection.connection_made(transport)
    read = 256 * 1024  # what asyncio reads from a socket at most, at once
    taken = 0
    while taken < len(data) and not connection.result.done():
        connection.data_received(data[taken : taken + read])
        taken += read
    assert connection.result.done() and transport.closed
    assert problem in str(connection.result.exception())
    assert taken <= rtsp.MAX_HEADER_BYTES + rtsp.MAX_BODY_BYTES + read


@pytest.mark.parametrize(
    "unit", [b"\r\n", b"$\x09\x00\x00"], ids=["blank-lines", "empty-frames"]
)
async def test_parsing_cost_stays_linear(unit):
    """2 MB of tiny messages in one read: aiortsp alone copies the rest of its input per
    message (quadratic: ~20 s here); parsed in slices it takes a second or two at most.
    (Header lines cost the same, but stop at MAX_HEADER_BYTES.)"""
    connection = rtsp._GuardedConnection("127.0.0.1", 9, timeout=1)
    connection.connection_made(_Transport())
    started = time.monotonic()
    connection.data_received(unit * (2 * 1024 * 1024 // len(unit)))
    assert time.monotonic() - started < 5.0
    assert not connection.result.done()  # all of it was valid, if useless


async def test_a_viewer_waiting_for_a_camera_that_is_removed_is_answered_at_once(
    make_server, http
):
    """An on-demand camera that never answers is removed (DELETE /api/cameras, shutdown)
    while a viewer's WHEP request waits for it: the viewer gets its 503 now, not when
    the camera's 10 s would have run out."""

    async def silent(connection: Connection, attempt: int) -> None:
        pass  # accept, then say nothing

    camera = FakeCamera(silent)
    await camera.start()
    url = f"rtsp://127.0.0.1:{camera.port}/stream"
    server = await make_server(admin_key="k")
    headers = {"Authorization": "Bearer k"}
    async with http.post(
        server.make_url("/api/cameras"), json={"id": "cam", "url": url}, headers=headers
    ) as created:
        assert created.status == 201, await created.text()
    offer = await recvonly_offer()
    waiting = asyncio.ensure_future(
        http.post(
            server.make_url("/whep/cam"),
            data=offer,
            headers={"Content-Type": "application/sdp"},
        )
    )
    await wait_for(lambda: camera.attempts, message="the camera was never asked")
    async with http.delete(
        server.make_url("/api/cameras/cam"), headers=headers
    ) as removed:
        assert removed.status == 200
    response = await asyncio.wait_for(waiting, 3)
    assert response.status == 503, await response.text()
    response.release()
    await camera.close()
