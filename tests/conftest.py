"""Fixtures that own real processes: redis-server nodes, nutcracker, ringleader proxies.

Under CI (``CI=true``) a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from backends.local_nodes import (
    HOST,
    RedisProcess,
    ServerNotFound,
    find_binary,
    find_redis_server,
    free_port,
    redis_ping,
    start_redis,
    wait_until,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def require(finder: Callable[[], str]) -> str:
    """The binary ``finder`` locates; skip when missing, but fail under CI."""
    try:
        return finder()
    except ServerNotFound as exc:
        if IN_CI:
            pytest.fail(f"required server missing under CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_server_binary() -> str:
    return require(find_redis_server)


@pytest.fixture(scope="session")
def nutcracker_binary() -> str:
    return require(lambda: find_binary("nutcracker", "apt-get install nutcracker"))


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


@pytest.fixture
def make_nodes(redis_server_binary: str) -> Iterator[NodeFactory]:
    factory = NodeFactory(redis_server_binary)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def three_nodes(redis_server_binary: str) -> Iterator[list[RedisProcess]]:
    """Three nodes shared by a module's tests (each test starts from empty nodes)."""
    factory = NodeFactory(redis_server_binary)
    nodes = factory(3)
    yield nodes
    factory.stop_all()


@pytest.fixture
def nodes(three_nodes: list[RedisProcess]) -> list[RedisProcess]:
    for node in three_nodes:
        if not node.alive():
            pytest.fail(f"node {node.address} died during an earlier test")
        redis.Redis(host=HOST, port=node.port, protocol=2).flushall()
    return three_nodes


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

    def __call__(self, *args: str, password: str | None = None) -> ProxyProcess:
        proxy = ProxyProcess(list(args), free_port(), password=password)
        self.started.append(proxy)
        return proxy

    def stop_all(self) -> None:
        for proxy in self.started:
            proxy.stop()


def node_list(nodes: list[RedisProcess]) -> str:
    return ",".join(node.address for node in nodes)


@pytest.fixture
def make_proxy() -> Iterator[ProxyFactory]:
    factory = ProxyFactory()
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def module_proxy(three_nodes: list[RedisProcess]) -> Iterator[ProxyProcess]:
    """One proxy in front of ``three_nodes`` for a module's tests."""
    factory = ProxyFactory()
    yield factory("--nodes", node_list(three_nodes))
    factory.stop_all()


@pytest.fixture
def proxy(module_proxy: ProxyProcess, nodes: list[RedisProcess]) -> ProxyProcess:
    if module_proxy.proc.poll() is not None:
        pytest.fail(f"proxy died during an earlier test; log:\n{module_proxy.output()}")
    return module_proxy


def direct(node: RedisProcess) -> redis.Redis:
    """A client straight to one node, bypassing the proxy (to check where keys landed)."""
    return redis.Redis(host=HOST, port=node.port, protocol=2, password=node.password)
