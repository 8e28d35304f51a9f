"""Shared, pipelined connections to storage nodes.

One connection per node per protocol carries the requests of every client: requests that
arrive in one poller round leave in one send, and replies are matched to requests first in,
first out. A client's request is represented here only by its *entry*, an object with a
``fill(raw_reply)`` method returning the client session to notify (or None).

A node that does not answer fails fast: while it is down every request for it gets an error
naming it at once, and the connection retries with backoff in the background.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from router import resp
from router.nodes import NodeSpec
from router.resp import NULL2, bulk_end

from .poller import IN, OUT, Poller
from .slots import ItemsPart, Slot
from .wakeup import close, send_all, tune

log = logging.getLogger("ringleader.node")

RECV_SIZE = 64 * 1024  # below glibc's mmap threshold: no mmap/munmap per read


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
    """One shared connection to one node, speaking one RESP protocol version.

    The data path (queueing requests, sending them, matching replies) runs in the poller's
    task through ``submit``, ``flush`` and ``on_readable``; connecting, logging in, the
    hang watchdog and reconnecting with backoff run in this connection's own task, ``run``.
    """

    def __init__(self, node: NodeSpec, proto: int, settings: NodeSettings, poller: Poller,
                 *, dedicated: bool = False) -> None:
        #: A dedicated connection belongs to one client (WATCH state, blocking commands): it
        #: has no hang watchdog (a blocked command may wait forever) and is not re-opened
        #: when lost, since the state it held on the node is gone with it.
        self.dedicated = dedicated
        #: Subscribed connections: every reply is a push for ``on_push``, none is matched to
        #: a request.
        self.on_push: Callable[[bytes], None] | None = None
        #: Told when a dedicated connection is lost (its client may have to go too).
        self.on_lost: Callable[[str], None] | None = None
        self._scope: trio.CancelScope | None = None
        self.node = node
        self.address = node.address
        self.proto = proto
        self.settings = settings
        self.poller = poller
        self.state = CONNECTING
        self.reason = "not connected yet"
        self.outbuf: list[bytes] = []
        self.fifo: deque = deque()
        self.dirty = False  # queued for a flush at the end of the poller's round
        self.sock: socket.socket | None = None
        self._unsent: memoryview | None = None  # what the last send could not take
        self._inbuf = b""
        #: the header of the last bulk reply read and that reply's length in bytes: the
        #: next reply starting with the same header is framed without parsing its length
        self._bulk_head, self._bulk_size = b"\0", 0
        self._failed = trio.Event()
        self._replies = 0  # replies received: the watchdog's progress counter
        self._down_error = resp.error(f"ERR ringleader: node {self.address} is down")
        # statistics for INFO
        self.requests_total = 0
        self.replies_total = 0  # replies matched, and requests failed: FIFO positions done
        self.errors_total = 0
        self.connects_total = 0
        self.latency_us = 0.0  # smoothed round trip of a batch, sampled one batch at a time
        self.latency_max_us = 0.0
        self._probe: tuple[int, float] | None = None
        self._ack_groups: dict[bytes, list] = {}  # WAIT command -> writes of this round

    # ------------------------------------------------------------------ data path (poller)

    def submit(self, payload: bytes, entry: object) -> bytes | None:
        """Queue one request; returns an error reply instead when the node is down."""
        if self.state is DOWN:
            self.errors_total += 1
            return self._down_error
        self.requests_total += 1
        self.outbuf.append(payload)
        self.fifo.append(entry)
        if not self.dirty:
            self.dirty = True
            self.poller.node_dirty(self)
        return None

    def send_unmatched(self, payload: bytes) -> bytes | None:
        """Queue a request whose replies go to ``on_push`` (SUBSCRIBE and friends)."""
        if self.state is DOWN:
            return self._down_error
        self.outbuf.append(payload)
        if not self.dirty:
            self.dirty = True
            self.poller.node_dirty(self)
        return None

    def submit_many(self, payloads: list[bytes], entries: list) -> bytes | None:
        """Queue several requests back to back (a transaction: nothing else can come between
        them); returns an error reply instead when the node is down."""
        if self.state is DOWN:
            self.errors_total += len(entries)
            return self._down_error
        self.requests_total += len(entries)
        self.outbuf.extend(payloads)
        self.fifo.extend(entries)
        if not self.dirty:
            self.dirty = True
            self.poller.node_dirty(self)
        return None

    def submit_acked(self, payload: bytes, entry: object, wait: bytes, waiter: object) -> bytes | None:
        """A write whose acknowledgement level needs ``wait`` (``WAIT n t``) after it: the
        writes of one round share a single WAIT, sent after all of them (group commit), and
        its reply goes to every ``waiter``."""
        err = self.submit(payload, entry)
        if err is None:
            self._ack_groups.setdefault(wait, []).append(waiter)
        return err

    def flush(self) -> None:
        """Send everything queued in one write, without waiting."""
        if self._ack_groups and self.state is UP:
            for wait, waiters in self._ack_groups.items():
                self.outbuf.append(wait)
                self.fifo.append(_Broadcast(waiters, self.poller))
                self.requests_total += 1
            self._ack_groups = {}
        if self.state is not UP or self._unsent is not None or not self.outbuf:
            return
        outbuf = self.outbuf
        data = outbuf[0] if len(outbuf) == 1 else b"".join(outbuf)
        outbuf.clear()
        if self._probe is None:  # time this batch's last reply
            self._probe = (self.requests_total, time.perf_counter())
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.lost(f"connection lost ({_describe(exc)})")
            return
        if sent < len(data):
            self._unsent = memoryview(data)[sent:]
            self.poller.modify(self.sock.fileno(), IN | OUT)

    def on_writable(self) -> None:
        unsent = self._unsent
        if unsent is None:
            return
        try:
            sent = self.sock.send(unsent)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(f"connection lost ({_describe(exc)})")
            return
        if sent < len(unsent):
            self._unsent = unsent[sent:]
            return
        self._unsent = None
        self.poller.modify(self.sock.fileno(), IN)
        self.flush()

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(f"connection lost ({_describe(exc)})")
            return
        if not data:
            self.lost("closed the connection")
            return
        buf = self._inbuf + data if self._inbuf else data
        if self.on_push is not None:
            self._deliver_pushes(buf)
            return
        fifo = self.fifo
        popleft = fifo.popleft
        find = buf.find
        startswith = buf.startswith
        head, size = self._bulk_head, self._bulk_size
        n = len(buf)
        pos = 0
        touched = []
        try:
            while pos < n:
                # fast paths for the common replies, else the general scanner. A bulk reply
                # whose header is the same as the last bulk's (a run of GETs of like values)
                # is framed by that header alone: no number to parse
                t = buf[pos]
                if t == 36:  # '$'
                    if startswith(head, pos):
                        end = pos + size
                        if end > n:
                            break
                    elif startswith(NULL2, pos):  # a missing key's null
                        end = pos + 5
                    else:
                        end, header = bulk_end(buf, pos, n)
                        if end < 0:
                            break
                        if header is not None:
                            head, size = header, end - pos
                elif t == 43 or t == 58 or t == 45:  # '+' ':' '-'
                    end = find(b"\r\n", pos) + 2
                    if end < 2:
                        break
                else:
                    if t == 42 and fifo and type(fifo[0]) is ItemsPart:
                        end = fifo[0].frame(buf, pos, n)  # keeps the array's elements
                    else:
                        end = resp.reply_end(buf, pos, n)
                    if end < 0:
                        break
                if not fifo:
                    raise resp.ProtocolError("a reply nobody asked for")
                entry = popleft()
                if type(entry) is Slot:  # the common case, inlined
                    entry.data = buf[pos:end]
                    client = entry.client
                else:
                    client = entry.fill(buf[pos:end])
                if client is not None and not client.dirty:
                    client.dirty = True
                    touched.append(client)
                pos = end
        except (resp.ProtocolError, ValueError) as exc:
            self._inbuf = b""
            if touched:
                self.poller.clients_dirty(touched)
            self.lost(f"sent a malformed reply ({exc})")
            return
        self._bulk_head, self._bulk_size = head, size
        self._inbuf = buf[pos:] if pos < n else b""
        self._replies += 1
        self.replies_total = self.requests_total - len(fifo)
        probe = self._probe
        if probe is not None and self.replies_total >= probe[0]:
            self._probe = None
            sample = (time.perf_counter() - probe[1]) * 1e6
            self.latency_us = sample if not self.latency_us else 0.9 * self.latency_us + 0.1 * sample
            if sample > self.latency_max_us:
                self.latency_max_us = sample
        if touched:
            self.poller.clients_dirty(touched)

    def _deliver_pushes(self, buf: bytes) -> None:
        pos, n = 0, len(buf)
        try:
            while pos < n:
                end = resp.reply_end(buf, pos, n)
                if end < 0:
                    break
                self.on_push(buf[pos:end])
                pos = end
        except (resp.ProtocolError, ValueError) as exc:
            self._inbuf = b""
            self.lost(f"sent a malformed reply ({exc})")
            return
        self._inbuf = buf[pos:] if pos < n else b""

    def lost(self, reason: str) -> None:
        """The connection is unusable: fail what is outstanding; ``run`` reconnects."""
        if self.state is not UP:
            return
        if self.sock is not None:
            self.poller.unregister(self.sock.fileno())
        self._fail_all(reason)
        log.warning("node %s: %s", self.address, reason)
        self._failed.set()

    @property
    def outstanding(self) -> int:
        return len(self.fifo)

    # ------------------------------------------------------------------ lifecycle (task)

    async def run(self) -> None:
        """Connect, serve, and on failure fail every outstanding request and retry (a
        dedicated connection ends instead)."""
        with trio.CancelScope() as self._scope:
            await self._run()

    def close(self) -> None:
        """Stop this connection (its outstanding requests fail); used for dedicated ones."""
        if self._scope is not None:
            self._scope.cancel()
        if self.state is not UP:
            self._fail_all("closed")

    async def _run(self) -> None:
        delay = self.settings.retry_initial
        while True:
            # Requests wait only for the first connection; after a failure they fail fast
            # (state DOWN) until a reconnection succeeds.
            try:
                sock = await self._connect()
            except Exception as exc:  # refused, timed out, login failed: retry with backoff
                if not isinstance(exc, OSError | NodeFailure | trio.TooSlowError):
                    log.exception("node %s: unexpected error while connecting", self.address)
                self._fail_all(f"unreachable ({_describe(exc)})")
                if self.dedicated:
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            delay = self.settings.retry_initial
            self.connects_total += 1
            self.sock = sock
            self._inbuf = b""
            self._unsent = None
            self._failed = trio.Event()
            self.state = UP
            self.reason = ""
            self.poller.register(sock.fileno(), self, IN)
            if self.outbuf and not self.dirty:  # requests queued while connecting
                self.dirty = True
                self.poller.node_dirty(self)
            try:
                async with trio.open_nursery() as nursery:
                    if not self.dedicated:
                        nursery.start_soon(self._watchdog)
                    await self._failed.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self.lost("connection closed")  # no-op unless cancelled while up
                self.poller.unregister(sock.fileno())
                close(sock)
                self.sock = None
            if self.dedicated:
                return

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
                        raise OSError(err, os.strerror(err)) from None
                await self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _handshake(self, sock: socket.socket) -> None:
        """Log in, pick the protocol and database before any client request is sent."""
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
                end = resp.reply_end(buf, pos, len(buf)) if pos < len(buf) else -1
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

    async def _watchdog(self) -> None:
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
                self.lost(f"timed out: no reply for {timeout * 1000:.0f} ms")
                return

    def _fail_all(self, reason: str) -> None:
        """Every outstanding request gets an error; new ones fail fast until reconnected."""
        self.state = DOWN
        self.reason = reason
        self._down_error = resp.error(f"ERR ringleader: node {self.address} is down: {reason}")
        lost = resp.error(
            f"ERR ringleader: node {self.address} failed: {reason}; the command may or may "
            "not have been applied")
        self.outbuf.clear()
        self._unsent = None
        self._probe = None
        self.dirty = False
        touched = []
        for waiters in self._ack_groups.values():  # their writes fail below; so do they
            fifo_waiters = _Broadcast(waiters, self.poller)
            fifo_waiters.fill(lost)
        self._ack_groups = {}
        fifo = self.fifo
        self.errors_total += len(fifo)
        while fifo:
            client = fifo.popleft().fill(lost)
            if client is not None and not client.dirty:
                client.dirty = True
                touched.append(client)
        if touched:
            self.poller.clients_dirty(touched)
        if self.on_lost is not None:
            self.on_lost(reason)


class _Broadcast:
    """One WAIT's reply, shared by every write of the round it follows."""

    __slots__ = ("waiters", "poller")

    def __init__(self, waiters: list, poller: Poller) -> None:
        self.waiters = waiters
        self.poller = poller

    def fill(self, raw: bytes) -> None:
        touched = []
        for waiter in self.waiters:
            client = waiter.fill(raw)
            if client is not None and not client.dirty:
                client.dirty = True
                touched.append(client)
        if touched:
            self.poller.clients_dirty(touched)
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "connect timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, "")
        return f"{exc.strerror or name}"
    return str(exc) or type(exc).__name__
