"""The proxy process: the listening socket, the client sessions, the node connections.

Structure follows ownership: the server's nursery owns the poller task (which drives every
client and node socket) and the node connections' tasks. Shutdown is a cancellation in
stages: stop accepting, let every session finish the requests it has in flight, then cancel
the nursery.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections.abc import Iterable

import trio

from backends.node import NodeSettings
from backends.poller import Poller
from backends.pool import Backend
from backends.wakeup import tune

from . import __version__
from .commands import CommandTable
from .config import ProxyConfig
from .local import REDIS_COMPAT_VERSION
from .route_table import RouteTable
from .session import ClientSession

log = logging.getLogger("ringleader.server")


def node_settings(config: ProxyConfig) -> NodeSettings:
    t = config.timeouts
    return NodeSettings(
        connect_timeout=t.connect_ms / 1000,
        request_timeout=t.request_ms / 1000,
        retry_initial=t.retry_initial_ms / 1000,
        retry_max=t.retry_max_ms / 1000,
        username=config.node_username,
        password=config.node_password,
        db=config.node_db,
    )


def open_listener(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class ProxyServer:
    def __init__(self, config: ProxyConfig, table: CommandTable | None = None) -> None:
        self.config = config
        self.table = table or CommandTable.default()
        self.placement = config.placement()
        self.routes = RouteTable(self.table, self.placement, [n.address for n in config.nodes])
        self.poller = Poller()
        self.backend: Backend | None = None
        self._sessions: dict[int, ClientSession] = {}
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._stop = trio.Event()
        self._all_closed = trio.Event()
        self.started = time.monotonic()
        self.connections_total = 0
        self.rejected_total = 0
        self.commands_total = 0
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ running

    async def run(self, listener: socket.socket | None = None, *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``shutdown()``; then finish in-flight requests (up to the drain
        timeout) and return."""
        if listener is None:
            listener = open_listener(self.config.listen_host, self.config.listen_port,
                                     reuse_port=self.config.workers > 1)
        self._listener = listener
        self.address = listener.getsockname()[:2]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.poller.run, name="poller")
                self.backend = Backend(self.config.nodes, node_settings(self.config), nursery,
                                       self.poller)
                self.backend.connections(2)  # connect now, not on the first request
                self.poller.register(listener.fileno(), self)
                task_status.started(self.address)
                await self._stop.wait()
                # stop accepting; every session finishes what it has in flight, then closes
                self.poller.unregister(listener.fileno())
                for session in list(self._sessions.values()):
                    session.stop_reading()
                if self._sessions:
                    self.poller.flush()
                    with trio.move_on_after(self.config.timeouts.drain_ms / 1000):
                        await self._all_closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            for session in list(self._sessions.values()):
                session.close()
            listener.close()

    def shutdown(self) -> None:
        """Stop accepting; sessions finish their in-flight requests, then ``run`` returns."""
        self._stop.set()

    # the listener is a poller handler too
    def on_readable(self) -> None:
        listener = self._listener
        max_clients = self.config.limits.max_clients
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors, say: keep serving the others
                log.warning("accept failed: %s", exc)
                return
            tune(sock)
            if len(self._sessions) >= max_clients:
                self.rejected_total += 1
                try:
                    sock.send(b"-ERR max number of clients reached\r\n")
                except OSError:
                    pass
                sock.close()
                continue
            self.connections_total += 1
            session = ClientSession(self, sock, next(self._ids))
            self._sessions[session.client_id] = session

    def on_writable(self) -> None:
        pass

    # ------------------------------------------------------------------ session registry

    def forget(self, session: ClientSession) -> None:
        self._sessions.pop(session.client_id, None)
        if not self._sessions and self._stop.is_set():
            self._all_closed.set()

    def sessions(self) -> Iterable[ClientSession]:
        return list(self._sessions.values())

    # ------------------------------------------------------------------ INFO

    def info_text(self, sections: list[bytes]) -> str:
        """The proxy's INFO: its own sections, in Redis's ``# Section`` / ``key:value`` form."""
        uptime = int(time.monotonic() - self.started)
        host, port = self.address or ("", 0)
        parts = {
            "server": {
                "redis_version": REDIS_COMPAT_VERSION,
                "ringleader_version": __version__,
                "redis_mode": "standalone",
                "process_id": os.getpid(),
                "tcp_port": port,
                "uptime_in_seconds": uptime,
                "uptime_in_days": uptime // 86400,
            },
            "clients": {
                "connected_clients": len(self._sessions),
                "maxclients": self.config.limits.max_clients,
            },
            "stats": {
                "total_connections_received": self.connections_total,
                "total_commands_processed": self.commands_total,
                "rejected_connections": self.rejected_total,
            },
            "nodes": {},
        }
        if self.backend is not None:
            for index, node in enumerate(self.config.nodes):
                conns = [c for c in self.backend.all_connections() if c.address == node.address]
                state = "up" if conns and all(c.state == "up" for c in conns) else (
                    conns[0].state if conns else "unknown")
                requests = sum(c.requests_total for c in conns)
                errors = sum(c.errors_total for c in conns)
                parts["nodes"][f"node{index}"] = (
                    f"address={node.address},name={node.label},weight={node.weight},"
                    f"state={state},requests={requests},errors={errors}")
        wanted = {s.decode().lower() for s in sections} - {"all", "everything", "default"}
        lines = []
        for section, values in parts.items():
            if wanted and section not in wanted:
                continue
            lines.append(f"# {section.capitalize()}")
            lines.extend(f"{k}:{v}" for k, v in values.items())
            lines.append("")
        return "\r\n".join(lines)
