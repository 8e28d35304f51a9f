"""A small request/response RESP2 client on trio, for the proxy's own background work (the
migration mover, sampling keys for the planner): not on the data path, so plain and simple.
"""

from __future__ import annotations

from collections.abc import Sequence

import hiredis
import trio

from router.nodes import NodeSpec


class CommandError(Exception):
    """The node answered with an error reply."""


class NodeClient:
    """One connection to one node; ``call`` and ``pipeline`` wait for the replies."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._reader = hiredis.Reader()
        self._lock = trio.Lock()

    @classmethod
    async def connect(cls, node: NodeSpec, *, username: str | None = None,
                      password: str | None = None, db: int = 0,
                      timeout: float = 2.0) -> NodeClient:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(node.host, node.port)
        client = cls(stream)
        password = node.password or password
        username = node.username or username
        try:
            if password:
                await client.call(*(["AUTH", username] if username else ["AUTH"]), password)
            if db:
                await client.call("SELECT", db)
        except BaseException:
            await stream.aclose()
            raise
        return client

    async def call(self, *args: object) -> object:
        (reply,) = await self.pipeline([args])
        if isinstance(reply, CommandError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[object]]) -> list[object]:
        """Send all, read all; error replies come back as CommandError values, in place."""
        async with self._lock:
            await self._stream.send_all(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
            replies: list[object] = []
            while len(replies) < len(commands):
                reply = self._reader.gets()
                if reply is False:
                    data = await self._stream.receive_some(65536)
                    if not data:
                        raise ConnectionError("the node closed the connection")
                    self._reader.feed(data)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    reply = CommandError(str(reply))
                replies.append(reply)
            return replies

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
