"""The two sockets between the main process and a worker.

Control: a SOCK_SEQPACKET pair carrying pickled messages, each whole, both ways:
requests that expect an answer (`call`) and notices that do not (`tell`). Both ends are
our own processes, started together, so pickle is safe here and no schema drifts.

Packets: a SOCK_DGRAM pair, main to worker only, one RTP packet per datagram behind
the track's number. A worker that cannot keep up loses packets (counted), and the
main process never waits for it.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import pickle
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# A SOCK_SEQPACKET message must fit the socket's send buffer (~208 KiB by default,
# what net.core.wmem_max allows): callers keep messages well below (stats go in
# chunks); a message too large anyway is dropped alone, not the channel with it.
MAX_MESSAGE_BYTES = 1 << 20
CONTROL_BUFFER_BYTES = 1 << 20
# A call the other end has not answered by then will not be answered: the caller
# gets TimeoutError instead of hanging (a stuck worker must not hang HTTP or shutdown).
CALL_TIMEOUT_S = 10.0
PACKET_HEADER = struct.Struct("!I")  # the track's number
PACKET_BUFFER_BYTES = 4 << 20  # about 2 s of a 16 Mbit/s stream


def socket_pairs() -> tuple[tuple[socket.socket, socket.socket], ...]:
    """(control, packets) pairs: the first of each stays here, the second goes."""
    control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    packets = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for pair, size in ((control, CONTROL_BUFFER_BYTES), (packets, PACKET_BUFFER_BYTES)):
        for sock in pair:  # the kernel caps these at net.core.[rw]mem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return (control[0], packets[0]), (control[1], packets[1])


class RemoteError(Exception):
    """The other end raised an exception that cannot cross (not picklable)."""


class ControlChannel:
    """Calls and notices over one SOCK_SEQPACKET socket."""

    def __init__(
        self,
        sock: socket.socket,
        handle_call: Callable[[str, dict[str, Any]], Any],
        handle_notice: Callable[[str, dict[str, Any]], None],
        on_lost: Callable[[], None],
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._handle_call = handle_call
        self._handle_notice = handle_notice
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._outbox: deque[bytes] = deque()
        self._task = asyncio.get_running_loop().create_task(self._read())
        self.closed = False

    async def call(
        self, method: str, timeout: float = CALL_TIMEOUT_S, **arguments: Any
    ) -> Any:
        """Ask the other end: its answer, or the exception it raised, or TimeoutError."""
        if self.closed:
            raise ConnectionError("the worker is gone")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            self._post(("call", call_id, method, arguments))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(call_id, None)

    def tell(self, method: str, **arguments: Any) -> None:
        """Send a notice; lost if the other end is gone."""
        self._post(("notice", 0, method, arguments))

    def _post(self, message: tuple[Any, ...]) -> None:
        """Send now, in order; what the socket cannot take yet waits for it here."""
        if self.closed:
            return
        self._outbox.append(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        if len(self._outbox) == 1:
            self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._outbox:
            try:
                self._sock.send(self._outbox[0])
            except BlockingIOError:
                loop.add_writer(self._sock, self._flush)
                return
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    self._lost()
                    return
                logger.error(
                    "a %d-byte control message is too large to send: dropped",
                    len(self._outbox[0]),
                )
            self._outbox.popleft()
        loop.remove_writer(self._sock)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        answering: set[asyncio.Task[None]] = set()
        while True:
            try:
                data = await loop.sock_recv(self._sock, MAX_MESSAGE_BYTES)
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            try:
                kind, call_id, method, arguments = pickle.loads(data)
            except Exception:  # our own processes: a bug, and nothing to trust after it
                logger.exception("unreadable control message: the channel is closed")
                self._lost()
                return
            if kind == "call":
                task = loop.create_task(self._answer(call_id, method, arguments))
                answering.add(task)
                task.add_done_callback(answering.discard)
            elif kind == "notice":
                self._run(self._handle_notice, method, arguments)
            else:
                future = self._waiting.get(call_id)
                if future is not None and not future.done():
                    if kind == "error":
                        future.set_exception(arguments)
                    else:
                        future.set_result(arguments)

    async def _answer(self, call_id: int, method: str, arguments: Any) -> None:
        try:
            result = self._handle_call(method, arguments)
            if asyncio.iscoroutine(result):
                result = await result
        except Exception as exc:  # raised at the caller, as if the call were local
            logger.debug("call %s failed", method, exc_info=True)
            try:  # an exception whose __init__ takes other arguments will not load
                pickle.loads(pickle.dumps(exc))
            except Exception:  # noqa: BLE001 - any failure: send its text instead
                exc = RemoteError(f"{type(exc).__name__}: {exc}")
            self._post(("error", call_id, method, exc))
            return
        self._post(("answer", call_id, method, result))

    def _run(self, handler: Callable[..., Any], method: str, arguments: Any) -> None:
        try:
            handler(method, arguments)
        except Exception:
            logger.exception("notice %s failed", method)

    def _lost(self) -> None:
        if not self.closed:
            self._lost_quietly()
            self._on_lost()

    def _lost_quietly(self) -> None:
        """Closed: every pending call fails now rather than waiting for ever."""
        self.closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the worker is gone"))

    def close(self) -> None:
        """Close the socket; pending calls fail. Idempotent."""
        if self._sock.fileno() == -1:
            return
        self._lost_quietly()
        self._task.cancel()
        asyncio.get_running_loop().remove_writer(self._sock)
        self._sock.close()
