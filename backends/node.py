"""Shared, pipelined connections to storage nodes.

One connection per node per protocol carries the requests of every client: requests that
arrive in one scheduler pass leave in one send, and replies are matched to requests first in,
first out. A client's request is represented here only by its *entry*, an object with a
``fill(raw_reply)`` method returning the client session to notify (or None).

A node that does not answer fails fast: while it is down every request for it gets an error
naming it at once, and the connection retries with backoff in the background.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from router import resp
from router.nodes import NodeSpec

from .wakeup import Wakeup, close, send_all, tune

log = logging.getLogger("ringleader.node")

RECV_SIZE = 256 * 1024


@dataclass(frozen=True)
class NodeSettings:
    """Timeouts and retry policy shared by every node connection."""

    connect_timeout: float = 1.0
    #: A node with requests outstanding that sends nothing for this long is declared hung.
    request_timeout: float = 2.0
    retry_initial: float = 0.05
    retry_max: float = 2.0
    username: str | None = None
    password: str | None = None
    db: int = 0


class NodeFailure(Exception):
    """Why a connection to a node ended; the text is shown to clients."""


CONNECTING, UP, DOWN = "connecting", "up", "down"


class NodeConnection:
    """One shared connection to one node, speaking one RESP protocol version."""

    def __init__(self, node: NodeSpec, proto: int, settings: NodeSettings,
                 on_touched: Callable[[list], None]) -> None:
        self.node = node
        self.address = node.address
        self.proto = proto
        self.settings = settings
        self._notify = on_touched  # called with the client sessions that got replies
        self.state = CONNECTING
        self.reason = "not connected yet"
        self.outbuf: list[bytes] = []
        self.fifo: deque = deque()
        self._flush_scheduled = False
        self._wake = Wakeup()
        self._replies = 0  # replies received: the watchdog's progress counter
        self._down_error = resp.error(f"ERR ringleader: node {self.address} is down")
        # statistics for INFO
        self.requests_total = 0
        self.errors_total = 0
        self.connects_total = 0

    # ------------------------------------------------------------------ sync side

    def submit(self, payload: bytes, entry: object) -> bytes | None:
        """Queue one request; returns an error reply instead when the node is down."""
        if self.state is DOWN:
            self.errors_total += 1
            return self._down_error
        self.requests_total += 1
        self.outbuf.append(payload)
        self.fifo.append(entry)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._wake.set()
        return None

    def submit_many(self, payloads: list[bytes], entries: list) -> bytes | None:
        """Queue several requests (a pipeline to one node) with one wakeup."""
        if self.state is DOWN:
            self.errors_total += len(entries)
            return self._down_error
        self.requests_total += len(entries)
        self.outbuf.extend(payloads)
        self.fifo.extend(entries)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._wake.set()
        return None

    @property
    def outstanding(self) -> int:
        return len(self.fifo)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, serve, and on failure fail every outstanding request and retry."""
        delay = self.settings.retry_initial
        while True:
            self.state = CONNECTING
            try:
                sock = await self._connect()
            except Exception as exc:  # refused, timed out, login failed: retry with backoff
                if not isinstance(exc, OSError | NodeFailure | trio.TooSlowError):
                    log.exception("node %s: unexpected error while connecting", self.address)
                self._fail_all(f"unreachable ({_describe(exc)})")
                await trio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            delay = self.settings.retry_initial
            self.connects_total += 1
            self.state = UP
            self.reason = ""
            try:
                reason = await self._serve(sock)
            finally:
                close(sock)
            self._fail_all(reason)
            log.warning("node %s: %s", self.address, reason)

    async def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tune(sock)
        try:
            with trio.fail_after(self.settings.connect_timeout):
                try:
                    sock.connect((self.node.host, self.node.port))
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, _strerror(err)) from None
                await self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _handshake(self, sock: socket.socket) -> None:
        """Log in and pick the protocol before any client request is sent."""
        node, settings = self.node, self.settings
        password = node.password or settings.password
        username = node.username or settings.username
        requests: list[list[bytes]] = []
        if self.proto == 3:
            hello = [b"HELLO", b"3"]
            if password:
                hello += [b"AUTH", (username or "default").encode(), password.encode()]
            requests.append(hello)
        elif password:
            requests.append([b"AUTH", *([username.encode()] if username else []), password.encode()])
        if settings.db:
            requests.append([b"SELECT", str(settings.db).encode()])
        if not requests:
            return
        await send_all(sock, b"".join(resp.pack_command(tuple(r)) for r in requests))
        buf = b""
        pos = 0
        for request in requests:
            while True:
                end = reply_end_or_wait(buf, pos)
                if end >= 0:
                    break
                await trio.lowlevel.wait_readable(sock)
                chunk = sock.recv(65536)
                if not chunk:
                    raise NodeFailure("closed the connection during login")
                buf += chunk
            reply = buf[pos:end]
            pos = end
            if reply[:1] == b"-":
                what = request[0].decode()
                raise NodeFailure(f"{what} failed: {reply[1:-2].decode(errors='replace')}")

    async def _serve(self, sock: socket.socket) -> str:
        """Run reader, writer and watchdog until one of them finds the connection broken."""
        failure: list[str] = []

        def fail(reason: str) -> None:
            if not failure:
                failure.append(reason)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._guard, self._reader, sock, fail)
            nursery.start_soon(self._guard, self._writer, sock, fail)
            nursery.start_soon(self._guard, self._watchdog, sock, fail)
        return failure[0] if failure else "connection closed"

    async def _guard(self, body, sock: socket.socket, fail: Callable[[str], None]) -> None:
        try:
            await body(sock)
        except NodeFailure as exc:
            fail(str(exc))
        except (OSError, trio.ClosedResourceError) as exc:
            fail(f"connection lost ({_describe(exc)})")
        except resp.ProtocolError as exc:
            fail(f"sent a malformed reply ({exc})")
        except Exception as exc:  # a bug here must cost this connection, not the proxy
            log.exception("node %s: unexpected error", self.address)
            fail(f"internal error ({exc})")

    async def _writer(self, sock: socket.socket) -> None:
        outbuf = self.outbuf
        while True:
            if not outbuf:
                self._flush_scheduled = False
                await self._wake.wait()
                if not outbuf:
                    continue
            data = outbuf[0] if len(outbuf) == 1 else b"".join(outbuf)
            outbuf.clear()
            await send_all(sock, data)

    async def _reader(self, sock: socket.socket) -> None:
        fifo = self.fifo
        notify = self._notify
        reply_end = resp.reply_end
        buf = b""
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            if not data:
                raise NodeFailure("closed the connection")
            buf = buf + data if buf else data
            n = len(buf)
            pos = 0
            touched = []
            while pos < n:
                # fast path for the common one-line and bulk replies, else the general scanner
                t = buf[pos]
                if t == 36:  # '$'
                    nl = buf.find(b"\r\n", pos)
                    if nl < 0:
                        break
                    length = int(buf[pos + 1:nl])
                    end = nl + 4 + length if length >= 0 else nl + 2
                    if end > n:
                        break
                elif t == 43 or t == 58 or t == 45:  # '+' ':' '-'
                    end = buf.find(b"\r\n", pos) + 2
                    if end < 2:
                        break
                else:
                    end = reply_end(buf, pos, n)
                    if end < 0:
                        break
                if not fifo:
                    raise resp.ProtocolError("a reply nobody asked for")
                client = fifo.popleft().fill(buf[pos:end])
                if client is not None and not client.dirty:
                    client.dirty = True
                    touched.append(client)
                pos = end
            buf = buf[pos:] if pos < n else b""
            self._replies += 1
            if touched:
                notify(touched)

    async def _watchdog(self, sock: socket.socket) -> None:
        timeout = self.settings.request_timeout
        tick = timeout / 4
        stalled = 0.0
        seen = self._replies
        while True:
            await trio.sleep(tick)
            if not self.fifo or self._replies != seen:
                stalled = 0.0
                seen = self._replies
                continue
            stalled += tick
            if stalled >= timeout:
                raise NodeFailure(f"timed out: no reply for {timeout * 1000:.0f} ms")

    def _fail_all(self, reason: str) -> None:
        """Every outstanding request gets an error; new ones fail fast until reconnected."""
        self.state = DOWN
        self.reason = reason
        self._down_error = resp.error(f"ERR ringleader: node {self.address} is down: {reason}")
        lost = resp.error(
            f"ERR ringleader: node {self.address} failed: {reason}; the command may or may "
            "not have been applied")
        self.outbuf.clear()
        self._flush_scheduled = False
        touched = []
        fifo = self.fifo
        self.errors_total += len(fifo)
        while fifo:
            client = fifo.popleft().fill(lost)
            if client is not None and not client.dirty:
                client.dirty = True
                touched.append(client)
        if touched:
            self._notify(touched)


def reply_end_or_wait(buf: bytes, pos: int) -> int:
    if pos >= len(buf):
        return -1
    return resp.reply_end(buf, pos, len(buf))


def _strerror(code: int) -> str:
    import os

    return os.strerror(code) if code else "error"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "connect timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, "")
        return f"{exc.strerror or name}"
    return str(exc) or type(exc).__name__
