"""Library mode for trio programs: ``await client.get("k")``.

Only the I/O differs from ``ShardedClient``: encoding, routing, batching and decoding are
``router.client``'s ``ClientCore`` and ``Batch``, and the command methods are redis-py's
``AsyncCoreCommands`` (each returns ``self.execute_command(...)``, a coroutine here). A
fan-out or a pipeline talks to its nodes concurrently, one task per node.

``TrioShardedClient.from_state_dir`` follows the live topology with a task (``TrioFollower``)
in a nursery of its own, opened and closed by its ``async with`` block: the same promises as
the blocking client's thread (router/follow.py), with the store read in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio
from redis.commands.core import AsyncCoreCommands
from redis.exceptions import TryAgainError

from rebalancer.store import StateDirStore, StoreError, UnknownParticipant
from rebalancer.topology import Topology

from . import resp
from .client import (
    Batch,
    Call,
    LibraryClientBase,
    NodeConnectionError,
    NodeTimeoutError,
    PipelineBase,
    ReplyFramer,
    Routing,
    looks_closed,
    refuse_transaction,
)
from .config import ProxyConfig
from .follow import FollowSettings, LeaseError, Participation, open_state_dir
from .nodes import NodeSpec

__all__ = ["TrioFollower", "TrioPipeline", "TrioShardedClient"]

log = logging.getLogger("ringleader.library")


class _TrioConnection:
    """One trio socket to one node; replies framed as they arrive."""

    __slots__ = ("sock", "framer", "address")

    def __init__(self, sock: trio.socket.SocketType, address: str) -> None:
        self.sock = sock
        self.address = address
        self.framer = ReplyFramer()

    @classmethod
    async def open(cls, node: NodeSpec, connect_timeout: float, timeout: float,
                   login: list[bytes]) -> _TrioConnection:
        address = node.address
        try:
            with trio.move_on_after(connect_timeout) as scope:
                stream = await trio.open_tcp_stream(node.host, node.port)
        except OSError as exc:
            raise NodeConnectionError(address, f"cannot connect: {_reason(exc)}") from None
        if scope.cancelled_caught:
            raise NodeTimeoutError(address, f"no connection within {connect_timeout:g}s")
        conn = cls(stream.socket, address)  # SocketStream has set TCP_NODELAY
        if login:
            try:
                replies = await conn.exchange(b"".join(login), len(login), timeout)
            except BaseException:
                conn.close()
                raise
            for reply in replies:
                if reply[:1] == b"-":
                    conn.close()
                    raise NodeConnectionError(address, "login refused: "
                                              + reply[1:-2].decode(errors="replace"))
        return conn

    async def exchange(self, payload: bytes, count: int, timeout: float) -> list[bytes]:
        """Send ``payload``, read ``count`` replies; the caller closes the connection if
        this raises (it is out of step with the node then)."""
        with trio.move_on_after(timeout):
            try:
                return await self._exchange(payload, count)
            except resp.ProtocolError as exc:
                raise NodeConnectionError(self.address, f"malformed reply: {exc}") from None
            except OSError as exc:
                raise NodeConnectionError(self.address,
                                          f"connection failed ({exc.strerror or exc}); the "
                                          "command may or may not have run") from None
        raise NodeTimeoutError(self.address, f"no reply within {timeout:g}s; the command may "
                               "or may not have run")

    async def _exchange(self, payload: bytes, count: int) -> list[bytes]:
        sock = self.sock
        view = memoryview(payload)
        while view:
            sent = await sock.send(view)
            view = view[sent:]
        framer = self.framer
        replies: list[bytes] = []
        while True:
            reply = framer.next_reply()
            while reply is not None:
                replies.append(reply)
                if len(replies) == count:
                    return replies
                reply = framer.next_reply()
            data = await sock.recv(framer.recv_size())
            if not data:
                raise NodeConnectionError(self.address, "the node closed the connection; the "
                                          "command may or may not have run")
            framer.feed(data)

    def usable(self) -> bool:
        return not self.framer.pending() and not looks_closed(self.sock.fileno())

    def close(self) -> None:
        sock = self.sock
        if sock.fileno() == -1:
            return
        try:
            sock.close()
        except RuntimeError:  # outside trio.run (a sync close() at exit): nothing waits on it
            os.close(sock.detach())


def _reason(exc: OSError) -> str:
    """trio reports a failed connect as one OSError caused by a group of attempts."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        first = cause.exceptions[0]
        if isinstance(first, OSError) and first.errno:
            return os.strerror(first.errno)
    return exc.strerror or str(exc)


class _TrioNodePool:
    """Idle connections to one node, at most ``limit`` in use at once (tasks beyond that
    wait their turn rather than opening ever more sockets)."""

    def __init__(self, node: NodeSpec, client: TrioShardedClient, limit: int) -> None:
        self.node = node
        self.client = client
        self.idle: list[_TrioConnection] = []
        self.slots = trio.Semaphore(limit)
        self.login = client._core.login_requests(node)
        self.retired = False  # the node left the topology: returned connections are closed

    async def exchange(self, payload: bytes, count: int, blocking: bool = False) -> list[bytes]:
        client = self.client
        async with self.slots:
            idle = self.idle
            conn = None
            while idle:
                candidate = idle.pop()
                if candidate.usable():
                    conn = candidate
                    break
                candidate.close()
            if conn is None:
                conn = await _TrioConnection.open(self.node, client.socket_connect_timeout,
                                                  client.socket_timeout, self.login)
            try:
                replies = await conn.exchange(payload, count,
                                              math.inf if blocking else client.socket_timeout)
            except BaseException:
                conn.close()
                raise
            if self.retired:
                conn.close()
            else:
                idle.append(conn)
            return replies

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    def retire(self) -> None:
        self.retired = True
        self.close()


class TrioShardedClient(LibraryClientBase, AsyncCoreCommands):
    """``ShardedClient`` for trio: every redis-py command method is a coroutine.

    Safe to share between tasks: each request borrows a connection of its node's pool, at
    most ``max_connections_per_node`` at once. Use it as ``async with`` (or call
    ``aclose()``) to close the pooled connections; ``async with
    TrioShardedClient.from_state_dir(path) as client:`` follows a live topology.
    """

    def __init__(self, nodes: Sequence[str] | str | None = None, *,
                 max_connections_per_node: int = 64, **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)
        if max_connections_per_node < 1:
            raise ValueError("max_connections_per_node must be at least 1")
        self._limit = max_connections_per_node
        self._pools: dict[NodeSpec, _TrioNodePool] = {}
        self._attach(self._core.routing)

    @classmethod
    @contextlib.asynccontextmanager
    async def from_state_dir(cls, path: str | os.PathLike[str] | None = None, *,
                             config: ProxyConfig | str | os.PathLike[str] | None = None,
                             db: int | None = None, participant_id: str | None = None,
                             poll_interval: float = 0.2, heartbeat_interval: float = 1.0,
                             participant_timeout: float = 10.0,
                             **kwargs: Any) -> AsyncIterator[TrioShardedClient]:
        """``async with TrioShardedClient.from_state_dir(path) as client:`` a client that
        follows the topology in a proxy's state directory (options as
        ``ShardedClient.from_state_dir``).

        The follower is a task in a nursery the block owns, so it cannot outlive the
        client: leaving the block stops it, unregisters and closes the connections.
        """
        settings = FollowSettings(poll_interval, heartbeat_interval, participant_timeout,
                                  participant_id)
        store, topology, base = await trio.to_thread.run_sync(
            open_state_dir, path, config, db, participant_timeout)
        client = cls(config=base, topology=topology, **kwargs)
        follower = TrioFollower(client, store, topology, settings)
        await follower.start()
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follower.run, name=f"ringleader follow {follower.id}")
                try:
                    yield client
                except BaseException as exc:
                    # re-raised below, outside the nursery, so the caller gets its own
                    # exception rather than an ExceptionGroup around it
                    failure = exc
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await follower.stop()
                await client.aclose()
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ pools per routing

    def _attach(self, routing: Routing) -> None:
        """Give a routing its pools, reusing the open ones of nodes it keeps."""
        pools = self._pools
        attached = []
        for node in routing.nodes:
            pool = pools.get(node)
            if pool is None:
                pool = pools[node] = _TrioNodePool(node, self, self._limit)
            attached.append(pool)
        routing.pools = attached

    def _retire_pools(self, routing: Routing) -> None:
        keep = set(routing.nodes)
        for node in [n for n in self._pools if n not in keep]:
            self._pools.pop(node).retire()

    # ------------------------------------------------------------------ commands

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Route, send and decode one command, as redis-py's asyncio client does."""
        core = self._core
        follow = self._follow
        if follow is None:
            call = core.prepare(args)
            raw = await self._send(call, call.routing)  # type: ignore[arg-type]
            return core.result(call, raw, options)
        routing = await follow.enter()
        gate = routing.gate
        try:
            call = core.prepare(args, routing)
            if call.blocking:  # may wait for minutes: must not hold back acknowledgements
                gate.leave()
                gate = None
            raw = await self._send(call, routing)
        finally:
            if gate is not None:
                gate.leave()
        return core.result(call, raw, options)

    async def _send(self, call: Call, routing: Routing) -> bytes | Exception:
        if call.node >= 0:
            return (await routing.pools[call.node].exchange(call.payload, 1, call.blocking))[0]
        if call.raw is not None:
            await trio.lowlevel.checkpoint()
            return call.raw
        return (await self._run(Batch([call]), routing))[0]

    async def _run(self, batch: Batch, routing: Routing) -> list[bytes | Exception]:
        """Move-then-serve first (the MIGRATEs of the batch's moving keys, per source), then
        every node its requests."""
        moves = batch.moves(routing, self._core.find_keys)
        if moves is not None:
            await self._await_barrier(routing)
            self._moved_on_access += batch.settle(routing,
                                                  await self._exchange_all(moves, routing))
        return await self._exchange_all(batch, routing)

    async def _await_barrier(self, routing: Routing) -> None:
        """Hold a move until every participant routes the arc with move-then-serve."""
        follow = self._follow
        if follow is None:
            return
        with trio.move_on_after(follow.settings.participant_timeout) as scope:
            while not await trio.to_thread.run_sync(follow.barrier_passed_sync, routing.epoch):
                await trio.sleep(0.02)
        if scope.cancelled_caught:
            raise TryAgainError("ringleader: the move of this key's arc is waiting "
                                "for other participants; retry")

    async def _exchange_all(self, batch: Batch, routing: Routing) -> list[bytes | Exception]:
        """Each node's requests in one write and its replies in one read, all nodes at once;
        a node that fails fails only its own calls."""
        work = list(batch.payloads())
        if len(work) == 1:
            await self._exchange(batch, routing, *work[0])
        elif work:
            async with trio.open_nursery() as nursery:
                for node, payload, count in work:
                    nursery.start_soon(self._exchange, batch, routing, node, payload, count)
        else:
            await trio.lowlevel.checkpoint()
        return batch.results()

    async def _exchange(self, batch: Batch, routing: Routing, node: int, payload: bytes,
                        count: int) -> None:
        try:
            batch.fill(node, await routing.pools[node].exchange(payload, count, batch.blocking))
        except NodeConnectionError as exc:
            batch.fail(node, exc)

    def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> TrioPipeline:
        """As ``ShardedClient.pipeline``; ``await p.execute()`` runs it."""
        refuse_transaction(transaction)
        return TrioPipeline(self)

    def close(self) -> None:
        """Close the idle connections (the client reconnects if used again)."""
        for pool in list(self._pools.values()):
            pool.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> TrioShardedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class TrioPipeline(PipelineBase, AsyncCoreCommands):
    """``TrioShardedClient.pipeline()``: command methods queue (no await needed) and
    ``await execute()`` returns the results in call order."""

    _client: TrioShardedClient

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """One round trip per node involved, all nodes concurrently. With
        ``raise_on_error=False`` errors (including a failed node's) are returned in place."""
        client = self._client
        follow = client._follow
        routing = client._core.routing if follow is None else await follow.enter()
        try:
            stack, batch = self._take(routing)
            if not stack:
                await trio.lowlevel.checkpoint()
                return []
            raws = await client._run(batch, routing)
        finally:
            if follow is not None:
                routing.gate.leave()
        return self._core.results(stack, raws, raise_on_error)

    async def __aenter__(self) -> TrioPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reset()


# ---------------------------------------------------------------- following a topology store


class TrioGate:
    """``router.follow.Gate`` for one trio thread: requests in flight on one routing."""

    __slots__ = ("active", "retired", "drained")

    def __init__(self) -> None:
        self.active = 0
        self.retired = False
        self.drained = trio.Event()

    def enter(self) -> bool:
        if self.retired:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1
        if self.retired and not self.active:
            self.drained.set()

    def retire(self) -> None:
        self.retired = True
        if not self.active:
            self.drained.set()


class TrioFollower(Participation):
    """The trio client's participation (router/follow.py says what it promises): ``run`` is
    the task that polls the epoch, swaps, acknowledges after the drain and heartbeats;
    ``enter`` renews a lapsed lease before a command is served."""

    def __init__(self, client: TrioShardedClient, store: StateDirStore, topology: Topology,
                 settings: FollowSettings) -> None:
        super().__init__(store, topology, settings, type(client).__name__)
        self._client = client
        self._lock = trio.Lock()  # one swap/registration at a time

    async def start(self) -> None:
        """Register with the epoch the client routes by."""
        client = self._client
        client._core.routing.gate = TrioGate()
        async with self._lock:
            await self._register()
        client._follow = self

    async def stop(self) -> None:
        self.closed = True
        self.last_beat = -math.inf  # a command after the block finds the lease gone
        await trio.to_thread.run_sync(self.unregister_sync)

    async def enter(self) -> Routing:
        """The routing a command uses, counted in its gate until ``gate.leave()``."""
        if time.monotonic() - self.last_beat >= self.lease:
            await self._renew()
        core = self._client._core
        while True:
            routing = core.routing
            if routing.gate.enter():
                return routing

    async def _renew(self) -> None:
        async with self._lock:
            if self.closed:
                raise LeaseError(f"library client {self.id} is closed (its async with block "
                                 "has ended); create a new one")
            if not self.lease_expired():
                return
            log.warning("library client %s: no heartbeat for %.1fs; reloading the topology",
                        self.id, time.monotonic() - self.last_beat)
            try:
                await self._apply(await trio.to_thread.run_sync(self.load_sync))
                await self._register()
            except (OSError, StoreError, ValueError) as exc:
                raise self.lease_error(exc) from exc

    async def _register(self) -> None:
        """Register, then make sure no newer epoch was written meanwhile."""
        while True:
            current = await trio.to_thread.run_sync(self.register_sync)
            if current is None or current == self.topology.epoch:
                return
            await self._apply(await trio.to_thread.run_sync(self.load_sync))

    async def run(self) -> None:
        while True:
            await trio.sleep(self.settings.poll_interval)
            try:
                async with self._lock:
                    await self._step()
            except Exception as exc:  # the store is unreadable for now: keep trying
                log.warning("library client %s: following %s failed: %s", self.id,
                            self.store.path, exc)

    async def _step(self) -> None:
        run = trio.to_thread.run_sync
        try:
            epoch = await run(self.store.epoch)
            if epoch is not None and epoch != self.topology.epoch:
                await self._apply(await run(self.load_sync))
                await run(self.heartbeat_sync)  # acknowledge at once: a barrier may wait
            elif self.beat_due():
                await run(self.heartbeat_sync)
        except UnknownParticipant:
            self.last_beat = -math.inf  # pruned as gone: commands wait for the reload
            await self._apply(await run(self.load_sync))
            await self._register()

    async def _apply(self, topology: Topology) -> None:
        """Swap to ``topology``'s routing; it is the applied epoch once every replaced
        routing's requests have finished (including a swap a cancellation interrupted)."""
        client = self._client
        core = client._core
        if topology.epoch != core.routing.epoch:
            log.info("library client %s: topology epoch %d (%d shards, %d migrations)",
                     self.id, topology.epoch, len(topology.shards), len(topology.migrations))
            new = core.routing_for(topology)
            new.gate = TrioGate()
            client._attach(new)
            old, core.routing = core.routing, new
            old.gate.retire()
            self.undrained.append(old.gate)
        while self.undrained:
            gate = self.undrained[0]
            with trio.move_on_after(0.05):
                await gate.drained.wait()
            if gate.drained.is_set():
                self.undrained.pop(0)
            else:
                await trio.to_thread.run_sync(self.beat_while_draining)
        self.topology = topology
        client._retire_pools(core.routing)
