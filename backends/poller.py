"""The data path's event loop: one epoll set for every client and node socket, driven by a
single trio task.

trio's ``wait_readable`` re-registers a socket with epoll and switches tasks on every wait,
about 11 µs of CPU each on the machines we measure on; a proxy request at pipeline depth 1
needs two such waits. Here sockets are registered once, and one trio task waits on the epoll
set itself: a wake-up serves every socket that became ready, so the cost per request is the
recv and send it needs, nothing more. The rest of the program (connecting, timers, admin)
stays ordinary trio code, and the poller task lives in the server's nursery like any other:
cancelling it stops the data path.

Each round: every ready socket's handler runs (clients parse and route requests, nodes match
replies), then every node with queued requests sends them in one write, then every client
with completed replies gets them in one write. Requests that arrive in one round therefore
leave in one send per node, whichever clients they came from.
"""

from __future__ import annotations

import logging
import select
from typing import Protocol

import trio

from .wakeup import Wakeup

log = logging.getLogger("ringleader.poller")

IN = select.EPOLLIN | select.EPOLLRDHUP
OUT = select.EPOLLOUT
_READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


class Handler(Protocol):
    def on_readable(self) -> None: ...

    def on_writable(self) -> None: ...


class Flushable(Protocol):
    dirty: bool

    def flush(self) -> None: ...


class Poller:
    """Registered handlers are called from one task; ``dirty`` objects flushed each round."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._masks: dict[int, int] = {}
        self._nodes: list[Flushable] = []  # node connections with requests to send
        self._clients: list[Flushable] = []  # client sessions with replies to send
        self._in_round = False
        self._kick = Wakeup()
        self.rounds = 0

    # ------------------------------------------------------------------ registration

    def register(self, fd: int, handler: Handler, mask: int = IN) -> None:
        self._handlers[fd] = handler
        self._masks[fd] = mask
        self._epoll.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        if fd in self._masks and self._masks[fd] != mask:
            self._masks[fd] = mask
            self._epoll.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            del self._masks[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------------ work to flush

    def node_dirty(self, node: Flushable) -> None:
        """``node`` has requests queued; they are sent at the end of this round (or soon)."""
        self._nodes.append(node)
        if not self._in_round:
            self._kick.set()

    def clients_dirty(self, clients: list[Flushable]) -> None:
        self._clients.extend(clients)
        if not self._in_round:
            self._kick.set()

    def client_dirty(self, client: Flushable) -> None:
        self._clients.append(client)
        if not self._in_round:
            self._kick.set()

    def flush(self) -> None:
        """Send what this round produced: node requests first, then client replies."""
        nodes = self._nodes
        clients = self._clients
        while nodes or clients:  # a client catching up can queue more node requests
            while nodes:
                batch = nodes[:]
                nodes.clear()
                for node in batch:
                    node.dirty = False
                    node.flush()
            while clients:
                batch = clients[:]
                clients.clear()
                for client in batch:
                    client.dirty = False
                    client.flush()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        epoll = self._epoll
        handlers = self._handlers
        fd = epoll.fileno()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_when_kicked)
                while True:
                    await trio.lowlevel.wait_readable(fd)
                    self._in_round = True
                    try:
                        for _ in range(8):  # serve bursts without a trip through trio
                            events = epoll.poll(0, 1024)
                            if not events:
                                break
                            for sock_fd, mask in events:
                                handler = handlers.get(sock_fd)
                                if handler is None:
                                    continue
                                try:
                                    if mask & _READ_EVENTS:
                                        handler.on_readable()
                                    if mask & _WRITE_EVENTS and sock_fd in handlers:
                                        handler.on_writable()
                                except Exception:  # one socket's bug must not stop the loop
                                    log.exception("handler for fd %d failed", sock_fd)
                            self.flush()
                            self.rounds += 1
                    finally:
                        self._in_round = False
        finally:
            epoll.close()

    async def _flush_when_kicked(self) -> None:
        """Work queued from outside a round (a timer, an admin task) is sent from here."""
        while True:
            await self._kick.wait()
            self._in_round = True
            try:
                self.flush()
            finally:
                self._in_round = False
