"""One client connection: frames its requests, runs each through its route, and writes the
replies back in request order.

A session is driven by the poller (backends/poller.py): ``on_readable`` parses and routes
what arrived, ``flush`` writes completed replies at the end of the round without waiting.
A client with too many requests outstanding, or with replies it is not reading, is not read
from until it catches up (and one that leaves more than ``max_output_bytes`` unread is
disconnected), so one slow or greedy client cannot grow the proxy's memory or hold up
anyone else.
"""

from __future__ import annotations

import hmac
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from backends.node import DOWN, UP
from backends.poller import IN, OUT
from backends.slots import Discard, FanoutSlot, HookSlot, ItemsPart, Part, Slot

from . import resp
from .pubsub import ALLOWED_WHILE_SUBSCRIBED, CONFIRMATIONS, Subscriptions, message_kind
from .resp import (
    BULK_HEADS,
    CRLF,
    HEADS,
    RequestReader,
    pack_command,
    request_head,
)
from .transaction import (
    DISCARD_WITHOUT_MULTI,
    EXEC_WITHOUT_MULTI,
    EXECABORT,
    NESTED,
    WATCH_IN_MULTI,
    Capture,
    Transaction,
)

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger("ringleader.session")

RECV_SIZE = 64 * 1024

HEADS_2, HEADS_3 = HEADS[2], HEADS[3]
join = b"".join


_UNAUTHENTICATED_OK = frozenset({b"AUTH", b"HELLO", b"QUIT"})

MOVING = resp.error("TRYAGAIN ringleader: this key's arc is moving between nodes; commands "
                    "that hold a node connection (WATCH, MULTI, blocking ones) cannot use it "
                    "until the move ends; retry shortly")


class ClientSession:
    """The sink routes talk to, and the owner of one client socket."""

    def __init__(self, server: ProxyServer, sock: socket.socket, client_id: int) -> None:
        self.server = server
        self.poller = server.poller
        self.sock = sock
        self.fd = sock.fileno()
        self.client_id = client_id
        self.proto = 2
        self.conns = server.backend.connections(2)
        self.pending: deque = deque()
        self.out: list[bytes] = []
        self.dirty = False  # queued for a flush at the end of the poller's round
        self.closing = False  # no more requests; close once the replies are out
        self.closed = False
        self.write_blocked = False
        self.reading = True
        self.framer = RequestReader(server.config.request_limits())
        self.max_pending = server.config.limits.max_pending
        self.max_output = server.config.limits.max_output_bytes
        self.backlog: list[list[bytes]] = []  # parsed, not yet run: over max_pending
        self.out_bytes = 0  # unsent reply bytes while the client is not keeping up
        self.authenticated = server.config.requirepass is None
        self.name: bytes | None = None
        self.lib_name: bytes | None = None
        self.lib_ver: bytes | None = None
        self.created = self.last_active = time.monotonic()
        self.last_request: list[bytes] = []
        self.tx: Transaction | None = None
        self.watch_node: int | None = None  # node whose dedicated connection holds WATCHes
        self.dedicated: dict[int, object] = {}  # node index -> this client's own connection
        self.replica_conns = server.backend.replicas(2)
        self.last_write = -1e9  # for read-your-writes
        self._spread = client_id  # round-robin over replicas, started apart per client
        self.admin_ok = False  # RINGLEADER AUTH given (when an admin password is set)
        self.subs: Subscriptions | None = None
        self.pubsub_conns: dict[int, object] = {}  # node index -> subscribed connection
        #: True when requests need none of the checks below (the common case): logged in, not
        #: in a transaction, not a RESP2 subscriber
        self.plain = self.authenticated
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
            host, port = sock.getsockname()[:2]
            self.local = f"{host}:{port}"
        except OSError:
            self.peer = self.local = "?"
        self.poller.register(self.fd, self, IN)

    # ------------------------------------------------------------------ sink API (routes)

    def forward(self, node: int, args: list[bytes]) -> None:
        n = len(args)
        try:  # the request re-encoded for the node; the usual shapes joined from ready pieces
            if n == 2:
                a, b = args
                payload = join((HEADS_2.get(a) or request_head(2, a), BULK_HEADS[len(b)], b, CRLF))
            elif n == 3:
                a, b, c = args
                payload = join((HEADS_3.get(a) or request_head(3, a), BULK_HEADS[len(b)], b, CRLF,
                                BULK_HEADS[len(c)], c, CRLF))
            else:
                payload = pack_command(tuple(args))
        except (IndexError, TypeError):  # 1024 bytes or more (no ready header for it), or an
            payload = pack_command(tuple(args))  # argument a route made (an int, a str)
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
        kind = ItemsPart if getattr(merge, "takes_items", False) else Part
        for index, (node, _) in enumerate(calls):
            part = kind(parent, index)
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

    # ------------------------------------------------------------------ read and write policies

    def forward_read(self, node: int, args: list[bytes], key: bytes) -> None:
        """A read under the key's read policy: a replica when allowed and up, unless this
        client wrote recently (read-your-writes), else the primary."""
        read = self.server.policies.for_key(key).read
        if read == "primary" or time.monotonic() - self.last_write < self.server.ryw_window:
            self.forward(node, args)
            return
        candidates = [c for c in self.replica_conns[node] if c.state is UP]
        if read == "any":
            candidates.append(self.conns[node])
        if not candidates:
            self.forward(node, args)  # prefer-replica falls back to the primary
            return
        self._spread += 1
        conn = candidates[self._spread % len(candidates)]
        payload = pack_command(tuple(args))
        slot = Slot(self)
        self.pending.append(slot)
        err = conn.submit(payload, slot)
        if err is not None:
            slot.data = err

    def forward_write(self, node: int, args: list[bytes], key: bytes) -> None:
        """A write whose OK means what the key's acknowledgement level says."""
        self.last_write = time.monotonic()
        ack = self.server.policies.for_key(key).ack
        if ack.kind == "primary":
            self.forward(node, args)
            return
        self.fanout_write([(node, args)], _only_reply, key)

    def fanout_write(self, calls: list[tuple[int, list[bytes]]], merge, key: bytes) -> None:
        """Split writes (MSET, DEL...): every node's part is followed by its acknowledgement
        wait on the same connection; the client's reply is an error unless all reached it."""
        self.last_write = time.monotonic()
        ack = self.server.policies.for_key(key).ack
        if ack.kind == "primary":
            if len(calls) == 1:
                self.forward(*calls[0])
            else:
                self.fanout(calls, merge)
            return
        wait = pack_command(ack_request(ack, self.server.ack_timeout_ms))
        payloads = [pack_command(tuple(args)) for _, args in calls]
        parent = FanoutSlot(self, 2 * len(calls), acknowledged(merge, ack, self.server))
        self.pending.append(parent)
        for index, (node, _) in enumerate(calls):
            err = self.conns[node].submit_acked(payloads[index], Part(parent, 2 * index), wait,
                                                Part(parent, 2 * index + 1))
            if err is not None:
                Part(parent, 2 * index).fill(err)
                Part(parent, 2 * index + 1).fill(err)

    def forward_observed(self, node: int, args: list[bytes], hook) -> None:
        """Forward, and show the reply to ``hook`` when it arrives (before the client)."""
        payload = pack_command(tuple(args))
        slot = HookSlot(self, hook)
        self.pending.append(slot)
        err = self.conns[node].submit(payload, slot)
        if err is not None:
            slot.fill(err)  # the hook sees the failure too

    def forward_dedicated(self, node: int, args: list[bytes]) -> None:
        """Run on this client's own connection to ``node`` (blocking commands, WATCH)."""
        if node < 0:
            self.reply(MOVING)
            return
        payload = pack_command(tuple(args))
        slot = Slot(self)
        self.pending.append(slot)
        err = self._dedicated(node).submit(payload, slot)
        if err is not None:
            slot.data = err

    def _dedicated(self, node: int):
        conn = self.dedicated.get(node)
        if conn is None or conn.state is DOWN or conn.proto != self.proto:
            if conn is not None:
                conn.close()
            conn = self.server.backend.open_dedicated(node, self.proto)
            self.dedicated[node] = conn
        return conn

    # ------------------------------------------------------------------ transactions

    def watch(self, node: int, args: list[bytes]) -> None:
        if self.tx is not None:
            self.reply(WATCH_IN_MULTI)
            return
        if node < 0:
            self.reply(MOVING)
            return
        if self.watch_node is not None and node != self.watch_node:
            self.reply(resp.error(
                "CROSSSLOT ringleader: these keys are on another node than the keys already "
                "WATCHed; a transaction runs on one node"))
            return
        self.watch_node = node
        self.forward_dedicated(node, args)

    def unwatch(self) -> bytes | None:
        if self.watch_node is None:
            return resp.OK
        node, self.watch_node = self.watch_node, None
        self.forward_dedicated(node, [b"UNWATCH"])
        return None

    def begin_transaction(self) -> bytes:
        if self.tx is not None:
            return NESTED
        self.tx = Transaction(self.watch_node, self.server.routes.labels)
        self._update_mode()
        return resp.OK

    def _queue(self, args: list[bytes]) -> None:
        """A command between MULTI and EXEC: routed, checked, held until EXEC."""
        name = args[0].upper()
        if name in (b"EXEC", b"DISCARD", b"MULTI", b"WATCH", b"QUIT", b"RESET"):
            self.server.routes.dispatch(args, self)
            return
        capture = Capture(self.proto)
        self.server.routes.dispatch(args, capture)
        if capture.node is not None and capture.node < 0:
            capture.refusal = MOVING
        self.reply(self.tx.queue(capture))

    def end_transaction(self, commit: bool) -> bytes | None:
        """EXEC (``commit``) or DISCARD; None when the reply will come from the node."""
        tx, self.tx = self.tx, None
        if tx is None:
            return EXEC_WITHOUT_MULTI if commit else DISCARD_WITHOUT_MULTI
        self._update_mode()
        watched, self.watch_node = self.watch_node, None
        if not commit:
            if watched is not None:
                self._send_quietly(self._dedicated(watched), [[b"UNWATCH"]])
            return resp.OK
        if tx.aborted:
            if watched is not None:
                self._send_quietly(self._dedicated(watched), [[b"UNWATCH"]])
            return EXECABORT
        if tx.node is None:
            return b"*0\r\n"
        hot = self.server.hot
        if hot is not None and hot.watched:  # the transaction's writes invalidate first
            for args in tx.queued:
                hot.invalidate_request(args)
        if watched is not None:
            conn = self.dedicated.get(watched)
            if conn is None or conn.state is DOWN:
                # the connection holding the WATCH is gone, so a watched key may have
                # changed unseen: abort, as Redis does when a watched key changed
                return resp.null(self.proto) if self.proto == 3 else b"*-1\r\n"
        else:
            conn = self.conns[tx.node]
        batch = tx.batch()
        slot = Slot(self)
        self.pending.append(slot)
        entries = [Discard() for _ in batch[:-1]] + [slot]
        err = conn.submit_many([pack_command(tuple(a)) for a in batch], entries)
        if err is not None:
            slot.data = err
        return None

    def reset_state(self) -> None:
        """RESET: out of any transaction, nothing watched, RESP2, no name."""
        self.tx = None
        if self.watch_node is not None:
            self._send_quietly(self._dedicated(self.watch_node), [[b"UNWATCH"]])
            self.watch_node = None
        self.name = None
        if self.subs is not None and self.subs.active:
            self.subs = None
            self._close_pubsub()
        self.set_proto(2)

    def _send_quietly(self, conn, requests: list[list[bytes]]) -> None:
        conn.submit_many([pack_command(tuple(a)) for a in requests],
                         [Discard() for _ in requests])

    # ------------------------------------------------------------------ pub/sub

    def pubsub(self, args: list[bytes]) -> None:
        """(P|S)(UN)SUBSCRIBE: confirmed by the proxy, sent to the nodes concerned."""
        if self.subs is None:
            self.subs = Subscriptions(self.server.channel_node, len(self.server.topology.shards))
        name = args[0].upper()
        names = args[1:]
        subs, proto = self.subs, self.proto
        if name == b"SUBSCRIBE":
            sends, confirmations = subs.subscribe(names, proto)
        elif name == b"SSUBSCRIBE":
            sends, confirmations = subs.subscribe(names, proto, shard=True)
        elif name == b"PSUBSCRIBE":
            sends, confirmations = subs.psubscribe(names, proto)
        elif name == b"UNSUBSCRIBE":
            sends, confirmations = subs.unsubscribe(names, proto)
        elif name == b"SUNSUBSCRIBE":
            sends, confirmations = subs.unsubscribe(names, proto, shard=True)
        else:
            sends, confirmations = subs.punsubscribe(names, proto)
        for node, command in sends:
            err = self._pubsub_conn(node).send_unmatched(pack_command(tuple(command)))
            if err is not None:  # without that node, some messages would never come
                self.reply(err)
                self.stop_reading()
                return
        self.reply(confirmations)
        if not subs.active:
            self._close_pubsub()
        self._update_mode()

    def rehome_subscriptions(self) -> None:
        """The topology changed: channels whose shard changed follow it (subscribe on the new
        node first, then leave the old one), and patterns reach every current shard."""
        subs = self.subs
        subs.node_count = len(self.server.topology.shards)
        old_conns = self.pubsub_conns
        self.pubsub_conns = {}
        for table, command in ((subs.channels, b"SUBSCRIBE"), (subs.shard_channels, b"SSUBSCRIBE")):
            for name in list(table):
                table[name] = node = self.server.channel_node(name)
                self._pubsub_conn(node).send_unmatched(pack_command((command, name)))
        if subs.patterns:
            for node in range(subs.node_count):
                self._pubsub_conn(node).send_unmatched(
                    pack_command((b"PSUBSCRIBE", *sorted(subs.patterns))))
        for conn in old_conns.values():  # messages may arrive twice meanwhile, never lost
            conn.on_lost = None
            conn.close()

    def _pubsub_conn(self, node: int):
        conn = self.pubsub_conns.get(node)
        if conn is None:
            conn = self.server.backend.open_dedicated(node, self.proto)
            conn.on_push = self._on_push
            conn.on_lost = self._on_pubsub_lost
            self.pubsub_conns[node] = conn
        return conn

    def _on_push(self, raw: bytes) -> None:
        """A message from a subscribed node connection: straight to the client, out of band
        (the nodes' own (un)subscribe confirmations are dropped: the proxy sent its own)."""
        if message_kind(raw) in CONFIRMATIONS or self.closed:
            return
        self.out.append(raw)
        if self.write_blocked:
            self.out_bytes += len(raw)
        if not self.dirty:
            self.dirty = True
            self.poller.client_dirty(self)

    def _on_pubsub_lost(self, reason: str) -> None:
        if not self.closed:
            log.warning("client %d: a subscribed node connection failed (%s); disconnecting "
                        "the client so it resubscribes", self.client_id, reason)
            self._broken()

    def _close_pubsub(self) -> None:
        conns, self.pubsub_conns = self.pubsub_conns, {}
        for conn in conns.values():
            conn.on_lost = None
            conn.close()

    def _update_mode(self) -> None:
        self.plain = (self.authenticated and self.tx is None
                      and not (self.proto == 2 and self.subs is not None and self.subs.active))

    @property
    def subscribed_resp2(self) -> bool:
        return self.proto == 2 and self.subs is not None and self.subs.active

    def _dispatch_special(self, args: list[bytes]) -> None:
        """Requests while logging in, in a transaction, or subscribed (RESP2)."""
        if not self.authenticated:
            self._dispatch_unauthenticated(args)
        elif self.tx is not None:
            self._queue(args)
        elif self.subscribed_resp2 and args[0].upper() not in ALLOWED_WHILE_SUBSCRIBED:
            self.reply(resp.error(
                f"ERR Can't execute '{args[0].decode(errors='replace').lower()}': only "
                "(P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this "
                "context"))
        else:
            self.server.routes.dispatch(args, self)

    def reply_later(self) -> Slot:
        """A place in the reply order for an answer computed elsewhere (admin commands)."""
        slot = Slot(self)
        self.pending.append(slot)
        return slot

    def complete(self, slot: Slot, raw: bytes) -> None:
        slot.data = raw
        if not self.closed and not self.dirty:
            self.dirty = True
            self.poller.client_dirty(self)

    # ------------------------------------------------------------------ connection state

    @property
    def last_command(self) -> str:
        return self.last_request[0].decode(errors="replace").lower() if self.last_request else "NULL"

    def set_proto(self, proto: int) -> None:
        self.proto = proto
        self.conns = self.server.backend.connections(proto)
        self.replica_conns = self.server.backend.replicas(proto)
        self._update_mode()

    def close_after_reply(self) -> None:
        self.closing = True

    def authenticate(self, username: bytes | None, password: bytes) -> bytes | None:
        """None when the credentials are right, else the error reply."""
        expected = self.server.config.requirepass
        if expected is None:
            if username in (None, b"default"):
                self.authenticated = True
                self._update_mode()
                return None
            return resp.error("WRONGPASS invalid username-password pair or user is disabled.")
        user_ok = username in (None, b"default")
        # compare in constant time whatever the username, so timing reveals nothing
        password_ok = hmac.compare_digest(password, expected.encode())
        if user_ok and password_ok:
            self.authenticated = True
            self._update_mode()
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

    # ------------------------------------------------------------------ reading

    def on_readable(self) -> None:
        if not self.reading:
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._broken()
            return
        if not data:  # the client hung up: like Redis, drop it (this also releases any
            self._broken()  # command it has blocked on a node)
            return
        else:
            try:
                requests = self.framer.feed(data)
            except resp.ProtocolError as exc:
                self.reply(resp.error(f"ERR Protocol error: {exc}"))
                self.stop_reading()
                requests = ()
            if requests:
                self._run(requests)
        if not self.dirty and (self.out or self.closing or (self.pending and
                                                             self.pending[0].data is not None)):
            self.dirty = True
            self.poller.client_dirty(self)

    def _run(self, requests: list[list[bytes]]) -> None:
        hot = self.server.hot
        if hot is not None and self.plain:
            try:
                hot.sample(requests)  # the hot-key detector counts a batch's keys at once
            except Exception:  # counting must never cost a request its reply
                log.exception("hot-key counting failed")
        self._serve(requests)

    def _serve(self, requests: list[list[bytes]]) -> None:
        server = self.server
        pending = self.pending
        if self.plain and not self.closing and len(pending) + len(requests) <= self.max_pending:
            # the common case, kept tight: every request straight to its route
            server.commands_total += len(requests)
            routes = server.routes
            fast = routes._fast
            resolve = routes.resolve
            for index, args in enumerate(requests):
                try:
                    (fast.get(args[0]) or resolve(args)).serve(args, self)
                except Exception as exc:  # a bad request or a bug must not take others down
                    self._failed(args, exc)
                if not self.plain or self.closing:
                    # MULTI, SUBSCRIBE, RESET...: the rest of the batch needs the checks
                    rest = requests[index + 1:]
                    if rest:
                        server.commands_total -= len(rest)
                        self._run_carefully(rest)
                    break
        else:
            self._run_carefully(requests)
        self.last_active = time.monotonic()
        self.last_request = requests[-1]
        if self.closing:
            self.stop_reading()

    def _run_carefully(self, requests: list[list[bytes]]) -> None:
        """Requests while logging in, in a transaction, subscribed, or near max_pending."""
        server = self.server
        pending = self.pending
        limit = self.max_pending
        for index, args in enumerate(requests):
            if self.closing:
                break
            if len(pending) >= limit:
                self.backlog = requests[index:]
                self._pause()
                break
            server.commands_total += 1
            try:
                if self.plain:
                    server.routes.dispatch(args, self)
                else:
                    self._dispatch_special(args)
            except Exception as exc:  # a bad request or a bug must not take others down
                self._failed(args, exc)

    def _failed(self, args: list[bytes], exc: Exception) -> None:
        if not args:  # an empty multibulk: Redis ignores it
            return
        if any(type(a) is not bytes for a in args):
            self.reply(resp.error("ERR Protocol error: expected '$', got something else"))
            self.stop_reading()
        else:
            log.exception("error serving %r", args[:2])
            self.reply(resp.error(f"ERR ringleader internal error: {exc}"))

    def _pause(self) -> None:
        if self.reading:
            self.reading = False
            self._update_mask()

    def _resume(self) -> None:
        """Read again once the client has caught up, running held-back requests first."""
        if self.closing or self.closed:
            return
        if self.backlog:
            requests, self.backlog = self.backlog, []
            self._serve(requests)  # counted already, when they were read
            if self.backlog:
                return
        if not self.reading and not self.write_blocked:
            self.reading = True
            self._update_mask()

    def stop_reading(self) -> None:
        """Take no more requests; replies to those in flight are still delivered."""
        self.closing = True
        self.backlog = []
        if self.reading:
            self.reading = False
            self._update_mask()
        if not self.dirty:
            self.dirty = True
            self.poller.client_dirty(self)

    def _update_mask(self) -> None:
        if not self.closed:
            self.poller.modify(self.fd, (IN if self.reading else 0) | (OUT if self.write_blocked else 0))

    # ------------------------------------------------------------------ writing

    def flush(self) -> None:
        """Move completed replies (in order) to the socket without waiting."""
        if self.closed:
            return
        pending = self.pending
        out = self.out
        blocked = self.write_blocked
        while pending:
            data = pending[0].data
            if data is None:
                break
            out.append(data)
            pending.popleft()
            if blocked:
                self.out_bytes += len(data)
        if blocked:
            if self.out_bytes > self.max_output:
                log.warning("client %d (%s): %d reply bytes unread, over limits.max_output_bytes;"
                            " disconnecting it", self.client_id, self.peer, self.out_bytes)
                self._broken()
            return
        if out:
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
                self.reading = False
                self._update_mask()
                return
        if not self.reading and not self.closing and len(pending) <= self.max_pending // 2:
            self._resume()
        if self.closing and not pending and not out:
            self.close()

    def on_writable(self) -> None:
        out = self.out
        if not out:
            return
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
            return
        self.write_blocked = False
        self.out_bytes = 0
        self._update_mask()
        self.flush()

    # ------------------------------------------------------------------ lifetime

    def _broken(self) -> None:
        """The client is gone or misbehaving: drop it and everything queued for it."""
        self.pending.clear()
        self.out.clear()
        self.backlog = []
        self.closing = True
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reading = False
        for conn in self.dedicated.values():  # releases blocked commands and WATCHes
            conn.close()
        self.dedicated.clear()
        self._close_pubsub()
        self.poller.unregister(self.fd)
        try:
            self.sock.close()
        finally:
            self.server.forget(self)


def _only_reply(parts: list[bytes], proto: int) -> bytes:
    return parts[0]


def ack_request(ack, timeout_ms: int) -> tuple[bytes, ...]:
    """What follows a write to make its acknowledgement level known."""
    if ack.kind == "fsync":
        return (b"WAITAOF", b"1", b"0", b"%d" % timeout_ms)
    return (b"WAIT", b"%d" % ack.count, b"%d" % timeout_ms)


def acknowledged(merge, ack, server):
    """Wrap a merge: parts alternate (reply, acknowledgement); any part short of the level
    turns the reply into an error saying what happened to the write."""

    def merge_acked(parts: list[bytes], proto: int) -> bytes:
        replies, acks = parts[0::2], parts[1::2]
        for reply in replies:
            if reply[:1] in (b"-", b"!"):
                return reply
        for raw in acks:
            short = ack_shortfall(raw, ack)
            if short is not None:
                server.ack_failures += 1
                return resp.error(
                    f"NOREPLICAS ringleader: the write was applied on the primary but {short} "
                    f"within {server.ack_timeout_ms} ms (write_ack = {ack})")
        return merge(replies, proto)

    return merge_acked


def ack_shortfall(raw: bytes, ack) -> str | None:
    """None when ``raw`` (a WAIT or WAITAOF reply) shows the level was reached."""
    if raw[:1] in (b"-", b"!"):
        return f"waiting for it failed ({raw[1:-2].decode(errors='replace')})"
    if ack.kind == "fsync":
        items = resp.split_reply_array(raw)
        local = resp.parse_integer(items[0]) if items else None
        if not local:
            return "it was not confirmed on the primary's disk"
        return None
    count = resp.parse_integer(raw)
    if count is None or count < ack.count:
        return f"only {count or 0} of {ack.count} replicas confirmed it"
    return None
