"""Fixtures that own real processes: redis-server nodes, nutcracker, ringleader proxies.

Under CI (``CI=true``) a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import redis
from helpers import NodeFactory, ProxyFactory, ProxyProcess, direct, node_list  # noqa: F401

from backends.local_nodes import HOST, RedisProcess, ServerNotFound, find_binary, find_redis_server

pytest_plugins = ["sentinel_fixtures"]  # shards watched by real Sentinels

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
