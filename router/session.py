"""One client connection: frames its requests, runs each through its route, and writes the
replies back in request order.

Replies are written by whichever task completes them (usually a node connection's reader,
with a non-blocking send), so a request costs no task switch of its own; only a client that
does not keep up with its replies gets its own writer task woken. A client with too many
requests outstanding, or unsent replies, is not read from until it catches up: one slow or
greedy client cannot grow the proxy's memory or hold up anyone else.
"""

from __future__ import annotations

import hmac
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import trio

from backends.wakeup import Wakeup, close

from . import resp
from .resp import RequestReader, pack_command

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger("ringleader.session")

RECV_SIZE = 64 * 1024


class Slot:
    """A reply to come, in the client's order; ``fill`` is called by the node connection."""

    __slots__ = ("data", "client")

    def __init__(self, client: ClientSession) -> None:
        self.data: bytes | None = None
        self.client = client

    def fill(self, raw: bytes) -> ClientSession:
        self.data = raw
        return self.client


class FanoutSlot:
    """A reply assembled from several nodes' replies by ``merge`` once all are in."""

    __slots__ = ("data", "client", "parts", "remaining", "merge")

    def __init__(self, client: ClientSession, count: int, merge) -> None:
        self.data: bytes | None = None
        self.client = client
        self.parts: list[bytes] = [b""] * count
        self.remaining = count
        self.merge = merge


class Part:
    __slots__ = ("parent", "index")

    def __init__(self, parent: FanoutSlot, index: int) -> None:
        self.parent = parent
        self.index = index

    def fill(self, raw: bytes) -> ClientSession | None:
        parent = self.parent
        parent.parts[self.index] = raw
        parent.remaining -= 1
        if parent.remaining:
            return None
        try:
            parent.data = parent.merge(parent.parts, parent.client.proto)
        except Exception as exc:  # a merge must never take the node reader down
            log.exception("merge failed")
            parent.data = resp.error(f"ERR ringleader: could not merge replies ({exc})")
        return parent.client


_UNAUTHENTICATED_OK = frozenset({b"AUTH", b"HELLO", b"QUIT"})


class ClientSession:
    """The sink routes talk to, and the owner of one client socket."""

    def __init__(self, server: ProxyServer, sock: socket.socket, client_id: int) -> None:
        self.server = server
        self.sock = sock
        self.client_id = client_id
        self.proto = 2
        self.conns = server.backend.connections(2)
        self.pending: deque = deque()
        self.out: list[bytes] = []
        self.dirty = False  # queued for a flush by a node reader
        self.closing = False
        self.broken = False
        self.write_blocked = False
        self.reading_paused = False
        self.framer = RequestReader(server.config.request_limits())
        self.max_pending = server.config.limits.max_pending
        self.max_output = server.config.limits.max_output_bytes
        self.backlog: list[list[bytes]] = []  # parsed, not yet run: over max_pending
        self.out_bytes = 0  # unsent reply bytes, counted while the client is not keeping up
        self._writer_wake = Wakeup()
        self._reader_wake = Wakeup()
        self._drained = Wakeup()
        self._read_scope: trio.CancelScope | None = None
        self.authenticated = server.config.requirepass is None
        self.name: bytes | None = None
        self.lib_name: bytes | None = None
        self.lib_ver: bytes | None = None
        self.created = self.last_active = time.monotonic()
        self.last_command = "NULL"
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
            host, port = sock.getsockname()[:2]
            self.local = f"{host}:{port}"
        except OSError:
            self.peer = self.local = "?"

    # ------------------------------------------------------------------ sink API (routes)

    def forward(self, node: int, args: list[bytes]) -> None:
        payload = pack_command(tuple(args))
        slot = Slot(self)
        self.pending.append(slot)
        err = self.conns[node].submit(payload, slot)
        if err is not None:
            slot.data = err

    def fanout(self, calls: list[tuple[int, list[bytes]]], merge) -> None:
        payloads = [pack_command(tuple(args)) for _, args in calls]
        parent = FanoutSlot(self, len(calls), merge)
        self.pending.append(parent)
        conns = self.conns
        for index, (node, _) in enumerate(calls):
            part = Part(parent, index)
            err = conns[node].submit(payloads[index], part)
            if err is not None:
                part.fill(err)

    def reply(self, raw: bytes) -> None:
        if self.pending:
            slot = Slot(self)
            slot.data = raw
            self.pending.append(slot)
        else:
            self.out.append(raw)

    # ------------------------------------------------------------------ connection state

    def set_proto(self, proto: int) -> None:
        self.proto = proto
        self.conns = self.server.backend.connections(proto)

    def close_after_reply(self) -> None:
        self.closing = True

    def authenticate(self, username: bytes | None, password: bytes) -> bytes | None:
        """None when the credentials are right, else the error reply."""
        expected = self.server.config.requirepass
        if expected is None:
            if username in (None, b"default"):
                self.authenticated = True
                return None
            return resp.error("WRONGPASS invalid username-password pair or user is disabled.")
        user_ok = username in (None, b"default")
        # compare in constant time whatever the username, so timing reveals nothing
        password_ok = hmac.compare_digest(password, expected.encode())
        if user_ok and password_ok:
            self.authenticated = True
            return None
        return resp.error("WRONGPASS invalid username-password pair or user is disabled.")

    def _dispatch_unauthenticated(self, args: list[bytes]) -> None:
        name = args[0].upper()
        if name not in _UNAUTHENTICATED_OK:
            self.reply(resp.error("NOAUTH Authentication required."))
            return
        if name == b"AUTH":
            if len(args) == 2:
                refused = self.authenticate(None, args[1])
            elif len(args) == 3:
                refused = self.authenticate(args[1], args[2])
            else:
                refused = resp.error("ERR wrong number of arguments for 'auth' command")
            self.reply(refused or resp.OK)
            return
        self.server.routes.dispatch(args, self)

    # ------------------------------------------------------------------ writing

    def flush(self) -> None:
        """Move completed replies (in order) to the socket without waiting."""
        pending = self.pending
        out = self.out
        while pending:
            data = pending[0].data
            if data is None:
                break
            out.append(data)
            pending.popleft()
            if self.write_blocked:
                self.out_bytes += len(data)
        if self.write_blocked:
            if self.out_bytes > self.max_output:
                log.warning("client %d (%s): %d reply bytes unread, over limits.max_output_bytes;"
                            " disconnecting it", self.client_id, self.peer, self.out_bytes)
                self._broken()
                return
        elif out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._broken()
                return
            if sent < len(data):
                out.append(data[sent:])
                self.out_bytes = len(data) - sent
                self.write_blocked = True
                self._writer_wake.set()
        if self.reading_paused and not self.write_blocked and len(pending) < self.max_pending // 2 + 1:
            self.reading_paused = False
            self._reader_wake.set()
        if self.closing and not pending and not out:
            self._drained.set()

    def _broken(self) -> None:
        self.broken = True
        self.closing = True
        self.pending.clear()
        self.out.clear()
        if self._read_scope is not None:
            self._read_scope.cancel()
        self._reader_wake.set()
        self._drained.set()

    async def _write_loop(self) -> None:
        sock = self.sock
        out = self.out
        while True:
            await self._writer_wake.wait()
            while out:
                await trio.lowlevel.wait_writable(sock)
                data = b"".join(out)
                out.clear()
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._broken()
                    return
                if sent < len(data):
                    out.insert(0, data[sent:])
                self.out_bytes = sum(map(len, out))
            self.write_blocked = False
            self.out_bytes = 0
            self.flush()

    # ------------------------------------------------------------------ reading

    def stop_reading(self) -> None:
        """Take no more requests; replies to those in flight are still delivered."""
        self.closing = True
        if self._read_scope is not None:
            self._read_scope.cancel()
        self._reader_wake.set()

    async def _read_loop(self) -> None:
        sock = self.sock
        server = self.server
        feed = self.framer.feed
        while not self.closing:
            if self.backlog:  # requests held back while this client was over max_pending
                requests, self.backlog = self.backlog, []
                self._run(requests, server)
                self.flush()
                if self.backlog or self.write_blocked:
                    self.reading_paused = True
                    await self._reader_wake.wait()
                continue
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                self._broken()
                return
            if not data:
                return
            try:
                requests = feed(data)
            except resp.ProtocolError as exc:
                self.reply(resp.error(f"ERR Protocol error: {exc}"))
                self.closing = True
                requests = ()
            if requests:
                self._run(requests, server)
            self.flush()
            if not self.closing and (self.backlog or self.write_blocked):
                self.reading_paused = True
                await self._reader_wake.wait()

    def _run(self, requests: list[list[bytes]], server: ProxyServer) -> None:
        dispatch = server.routes.dispatch
        pending = self.pending
        limit = self.max_pending
        for index, args in enumerate(requests):
            if self.closing:
                break
            if len(pending) >= limit:
                self.backlog = requests[index:]
                break
            server.commands_total += 1
            if not args:
                continue
            try:
                if self.authenticated:
                    dispatch(args, self)
                else:
                    self._dispatch_unauthenticated(args)
            except Exception as exc:  # a bad request or a bug must not take others down
                if any(type(a) is not bytes for a in args):
                    self.reply(resp.error("ERR Protocol error: expected '$', got something else"))
                    self.closing = True
                else:
                    log.exception("error serving %r", args[:2])
                    self.reply(resp.error(f"ERR ringleader internal error: {exc}"))
        self.last_active = time.monotonic()
        if requests[-1]:
            self.last_command = requests[-1][0].decode(errors="replace").lower()

    # ------------------------------------------------------------------ lifetime

    async def run(self, drain_timeout: float) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                with trio.CancelScope() as self._read_scope:
                    if not self.closing:
                        await self._read_loop()
                self.closing = True
                # requests already sent to nodes still get their replies
                with trio.move_on_after(drain_timeout):
                    while not self.broken and (self.pending or self.out):
                        await self._drained.wait()
                nursery.cancel_scope.cancel()
        except trio.ClosedResourceError:
            pass
        finally:
            close(self.sock)
            self.server.forget(self)
