"""Library mode for trio programs: ``await client.get("k")``.

Only the I/O differs from ``ShardedClient``: encoding, routing, batching and decoding are
``router.client``'s ``ClientCore`` and ``Batch``, and the command methods are redis-py's
``AsyncCoreCommands`` (each returns ``self.execute_command(...)``, a coroutine here). A
fan-out or a pipeline talks to its nodes concurrently, one task per node.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import trio
from redis.commands.core import AsyncCoreCommands

from . import resp
from .client import (
    Batch,
    LibraryClientBase,
    NodeConnectionError,
    NodeTimeoutError,
    PipelineBase,
    ReplyFramer,
    looks_closed,
    refuse_transaction,
)
from .nodes import NodeSpec

__all__ = ["TrioPipeline", "TrioShardedClient"]


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
        self.login = client._core.login_requests(node, client._username, client._password)

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
            idle.append(conn)
            return replies

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class TrioShardedClient(LibraryClientBase, AsyncCoreCommands):
    """``ShardedClient`` for trio: every redis-py command method is a coroutine.

    Safe to share between tasks: each request borrows a connection of its node's pool, at
    most ``max_connections_per_node`` at once. Use it as ``async with`` (or call
    ``aclose()``) to close the pooled connections.
    """

    def __init__(self, nodes: Sequence[str] | str | None = None, *,
                 max_connections_per_node: int = 64, **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)
        if max_connections_per_node < 1:
            raise ValueError("max_connections_per_node must be at least 1")
        self._pools = [_TrioNodePool(node, self, max_connections_per_node)
                       for node in self._core.nodes]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Route, send and decode one command, as redis-py's asyncio client does."""
        core = self._core
        call = core.prepare(args)
        if call.node >= 0:
            raw: bytes | Exception = (await self._pools[call.node].exchange(
                call.payload, 1, call.blocking))[0]
        elif call.raw is not None:
            await trio.lowlevel.checkpoint()
            raw = call.raw
        else:
            raw = (await self._run(Batch([call])))[0]
        return core.result(call, raw, options)

    async def _run(self, batch: Batch) -> list[bytes | Exception]:
        """Each node's requests in one write and its replies in one read, all nodes at once;
        a node that fails fails only its own calls."""
        work = list(batch.payloads())
        if len(work) == 1:
            await self._exchange(batch, *work[0])
        elif work:
            async with trio.open_nursery() as nursery:
                for node, payload, count in work:
                    nursery.start_soon(self._exchange, batch, node, payload, count)
        else:
            await trio.lowlevel.checkpoint()
        return batch.results()

    async def _exchange(self, batch: Batch, node: int, payload: bytes, count: int) -> None:
        try:
            batch.fill(node, await self._pools[node].exchange(payload, count, batch.blocking))
        except NodeConnectionError as exc:
            batch.fail(node, exc)

    def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> TrioPipeline:
        """As ``ShardedClient.pipeline``; ``await p.execute()`` runs it."""
        refuse_transaction(transaction)
        return TrioPipeline(self)

    def close(self) -> None:
        """Close the idle connections (the client reconnects if used again)."""
        for pool in self._pools:
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
        stack, batch = self._take()
        if not stack:
            await trio.lowlevel.checkpoint()
            return []
        raws = await self._client._run(batch)
        return self._core.results(stack, raws, raise_on_error)

    async def __aenter__(self) -> TrioPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reset()
