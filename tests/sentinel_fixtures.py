"""Fixtures owning a shard watched by real Redis Sentinels (imported by the sentinel tests).

A shard here is a primary, optionally a replica, and three sentinels with quorum 2, all on
free loopback ports, tuned for a fast failover (down after 1 s). Everything started is
stopped at the end, also when starting a later piece fails.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from conftest import require

from backends.local_nodes import (
    RedisOptions,
    RedisProcess,
    SentinelProcess,
    find_sentinel,
    start_redis,
    start_replica,
    start_sentinel,
    wait_for_replication,
    wait_for_sentinels,
)

MASTER = "shard0"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000

Address = tuple[str, int]


@dataclass
class SentinelShard:
    primary: RedisProcess
    replica: RedisProcess | None
    sentinels: list[SentinelProcess]
    name: str = MASTER
    #: Every process started for this shard, all stopped at the end.
    started: list[RedisProcess] = field(default_factory=list)

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [(s.host, s.port) for s in self.sentinels]

    def restart_primary(self, replica_of: RedisProcess | None = None) -> RedisProcess:
        """Bring a killed primary back on its old port, empty (no persistence); with
        ``replica_of``, as that node's replica from its first moment, as an operator brings
        back a node that kept no data: an empty node that starts as a primary can be taken
        for one by a sentinel that missed the failover, and wipe the new primary."""
        options = RedisOptions(replicaof=replica_of.address) if replica_of is not None else None
        self.primary = start_redis(self.primary.port, options=options,
                                   binary=self.primary.proc.args[0])
        self.started.append(self.primary)
        return self.primary

    def logs(self, tail: int = 25) -> str:
        """The end of every sentinel's log: what a failed failover test should show."""
        parts = []
        for s in self.sentinels:
            path = Path(s.workdir, "sentinel.log")
            lines = path.read_text(errors="replace").splitlines()[-tail:] if path.exists() else []
            parts.append(f"--- sentinel {s.address}\n" + "\n".join(lines))
        return "\n".join(parts)


def addr(node: RedisProcess) -> Address:
    return (node.host, node.port)


def stop(process: RedisProcess) -> None:
    process.stop()
    if process.proc.stderr is not None:  # RedisProcess.stop leaves its pipe open
        process.proc.stderr.close()


@contextlib.contextmanager
def sentinel_shard(server: str, sentinel: str, *, replica: bool = True,
                   sentinels: int = 3, quorum: int = 2) -> Iterator[SentinelShard]:
    """A primary (+ replica), and sentinels that already know each other and the replica,
    so that killing the primary starts a failover at once."""
    started: list[RedisProcess] = []
    try:
        primary = start_redis(binary=server)
        started.append(primary)
        second = None
        if replica:
            second = start_replica(primary, binary=server)
            started.append(second)
            wait_for_replication(primary, second)
        watchers = []
        for _ in range(sentinels):
            watchers.append(start_sentinel(monitors=[(MASTER, primary, quorum)],
                                           down_after_ms=DOWN_AFTER_MS,
                                           failover_timeout_ms=FAILOVER_TIMEOUT_MS,
                                           binary=sentinel))
            started.append(watchers[-1])
        wait_for_sentinels(watchers, MASTER, replicas=1 if replica else 0)
        yield SentinelShard(primary, second, watchers, started=started)
    finally:
        # sentinels first, so that stopping the nodes starts no failover
        for process in sorted(started, key=lambda p: not isinstance(p, SentinelProcess)):
            stop(process)


# Fixture functions carry a ``_fixture`` suffix so that a test module can import them
# without its test arguments shadowing the imported names (ruff F811).


@pytest.fixture(scope="session", name="sentinel_binary")
def sentinel_binary_fixture() -> str:
    return require(find_sentinel)


@pytest.fixture(scope="module", name="steady_shard")
def steady_shard_fixture(redis_server_binary: str, sentinel_binary: str) -> Iterator[SentinelShard]:
    """A shard shared by a module's tests that kill nothing."""
    with sentinel_shard(redis_server_binary, sentinel_binary) as shard:
        yield shard


@pytest.fixture(name="fresh_shard")
def fresh_shard_fixture(redis_server_binary: str, sentinel_binary: str) -> Iterator[SentinelShard]:
    """A shard of its own, for a test that kills or stops something."""
    with sentinel_shard(redis_server_binary, sentinel_binary) as shard:
        yield shard


@pytest.fixture(name="lone_primary")
def lone_primary_fixture(redis_server_binary: str, sentinel_binary: str) -> Iterator[SentinelShard]:
    """A primary with no replica: when it dies the sentinels agree it is down but have
    nothing to promote, so it stays down until restarted."""
    with sentinel_shard(redis_server_binary, sentinel_binary, replica=False) as shard:
        yield shard


@pytest.fixture(name="spare_node")
def spare_node_fixture(redis_server_binary: str) -> Iterator[RedisProcess]:
    """An independent node, not monitored by any sentinel yet."""
    node = start_redis(binary=redis_server_binary)
    yield node
    stop(node)


@dataclass
class Reports:
    """An ``on_change`` callback remembering every report and when it came."""

    values: list[Address | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __call__(self, primary: Address | None) -> None:
        self.values.append(primary)
        self.times.append(time.monotonic())
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[list[Address | None]], bool], timeout: float,
                    what: str, context: str = "") -> float:
        """Wait until the reports so far satisfy ``predicate``; the time of the last one."""
        with trio.move_on_after(timeout):
            while not predicate(self.values):
                await self._changed.wait()
            return self.times[-1]
        pytest.fail(f"{what}: not within {timeout:.0f}s; reports {self.values}\n{context}")
