"""Process owners and small clients shared by the tests (imported as ``helpers``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from backends.local_nodes import (
    HOST,
    RedisProcess,
    free_port,
    redis_ping,
    start_redis,
    wait_until,
)
from router.resp import reply_end

REPO = Path(__file__).resolve().parent.parent


class NodeFactory:
    """Starts redis-server nodes for one test scope and stops them all at its end."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.started: list[RedisProcess] = []

    def __call__(self, count: int = 1, **kwargs) -> list[RedisProcess]:
        nodes = [start_redis(binary=self.binary, **kwargs) for _ in range(count)]
        self.started.extend(nodes)
        return nodes

    def stop_all(self) -> None:
        for node in self.started:
            node.stop()
        self.started.clear()


class ProxyProcess:
    """A ``ringleader serve`` subprocess on a free loopback port."""

    def __init__(self, args: list[str], port: int, password: str | None = None) -> None:
        self.port = port
        self.args = args
        self.password = password
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ringleader-test-{port}.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--listen", f"{HOST}:{port}", *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
        try:
            wait_until(lambda: redis_ping(HOST, port, password=password), 20,
                       f"ringleader on port {port}", self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"proxy failed to start; log:\n{self.output()}") from None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(host=HOST, port=self.port, password=self.password, **kwargs)

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


class ProxyFactory:
    def __init__(self) -> None:
        self.started: list[ProxyProcess] = []

    def __call__(self, *args: str, password: str | None = None,
                 port: int | None = None) -> ProxyProcess:
        proxy = ProxyProcess(list(args), port or free_port(), password=password)
        self.started.append(proxy)
        return proxy

    def stop_all(self) -> None:
        for proxy in self.started:
            proxy.stop()


def node_list(nodes: list[RedisProcess]) -> str:
    return ",".join(node.address for node in nodes)


def direct(node: RedisProcess) -> redis.Redis:
    """A client straight to one node, bypassing the proxy (to check where keys landed)."""
    return redis.Redis(host=HOST, port=node.port, protocol=2, password=node.password)


def raw_exchange(port: int, payload: bytes, expect_replies: int = 1, timeout: float = 5) -> bytes:
    """Send raw bytes; read until ``expect_replies`` complete replies (or EOF) arrived."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(payload)
        buf = b""
        while True:
            pos, count = 0, 0
            while pos < len(buf):
                end = reply_end(buf, pos, len(buf))
                if end < 0:
                    break
                pos, count = end, count + 1
            if count >= expect_replies:
                return buf
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk


# ---------------------------------------------------------------- online topology changes


def write_state_dir_config(tmp_path, nodes, extra: str = "") -> str:
    """A proxy config over ``nodes`` with a state directory (topology changes allowed)."""
    path = tmp_path / "ringleader.toml"
    path.write_text(
        "nodes = [" + ", ".join(f'"{n.address}"' for n in nodes) + "]\n"
        f'state_dir = "{tmp_path / "state"}"\n' + extra)
    return str(path)


def admin(proxy, *args: str) -> dict:
    """A ``RINGLEADER ...`` admin command through ``proxy``, its JSON reply decoded."""
    reply = proxy.client(protocol=2).execute_command("RINGLEADER", *args)
    return json.loads(reply)


def wait_migrations(proxy, timeout: float = 120) -> list[dict]:
    """Every migration's final state, once none is under way any more."""
    deadline = time.monotonic() + timeout
    while True:
        migrations = admin(proxy, "MIGRATIONS")["migrations"]
        if migrations and all(m["state"] in ("done", "failed", "cancelled") for m in migrations):
            return migrations
        assert time.monotonic() < deadline, f"migrations did not finish: {migrations}"
        time.sleep(0.1)
