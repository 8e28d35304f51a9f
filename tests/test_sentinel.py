"""Following a shard's primary through Redis Sentinel: the event and reply decisions on their
own, then the blocking query and the watcher against real sentinels, failovers included."""

from __future__ import annotations

import gc
import os
import signal
import time

import pytest
import trio
from helpers import direct
from sentinel_fixtures import (  # noqa: F401 - the *_fixture names are fixtures
    MASTER,
    Reports,
    addr,
    fresh_shard_fixture,
    lone_primary_fixture,
    sentinel_binary_fixture,
    spare_node_fixture,
    steady_shard_fixture,
)

from backends.local_nodes import HOST, free_port, redis_command, start_sentinel
from backends.sentinel import (
    SentinelUnavailable,
    SentinelWatcher,
    parse_event,
    primary_from,
    query_primary,
)

FAILOVER_DEADLINE = 15.0


async def eventually(predicate, timeout: float, what: str) -> None:
    """Poll a condition that no callback announces (which sentinel the watcher follows)."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def master_reply(ip: str, port: int, flags: str) -> list[bytes]:
    return [b"name", b"m", b"ip", ip.encode(), b"port", str(port).encode(),
            b"flags", flags.encode()]


# ---------------------------------------------------------------- decisions, no processes


def test_switch_master_event_yields_the_new_address():
    assert parse_event(b"+switch-master", b"m 10.0.0.1 6379 10.0.0.2 6380", "m") == (
        "+switch-master", ("10.0.0.2", 6380))


def test_events_about_other_masters_are_ignored():
    assert parse_event(b"+switch-master", b"other 10.0.0.1 6379 10.0.0.2 6380", "m") is None
    assert parse_event(b"+odown", b"master other 10.0.0.1 6379 #quorum 2/2", "m") is None


def test_odown_names_the_master_and_replica_events_are_ignored():
    assert parse_event(b"+odown", b"master m 10.0.0.1 6379 #quorum 2/2", "m") == (
        "+odown", ("10.0.0.1", 6379))
    assert parse_event(b"+odown", b"slave 10.0.0.2:6380 10.0.0.2 6380 @ m 10.0.0.1 6379",
                       "m") is None


def test_no_usable_primary_while_the_named_primary_is_objectively_down():
    assert primary_from([b"10.0.0.1", b"6379"], master_reply("10.0.0.1", 6379, "master")) == (
        "10.0.0.1", 6379)
    assert primary_from([b"10.0.0.1", b"6379"],
                        master_reply("10.0.0.1", 6379, "s_down,o_down,master")) is None
    assert primary_from(None, None) is None  # unknown master name


def test_a_promoted_replica_is_usable_before_the_failover_ends():
    # In a failover's last step the address names the promoted replica; the flags still
    # describe the old primary.
    assert primary_from([b"10.0.0.2", b"6380"],
                        master_reply("10.0.0.1", 6379, "s_down,o_down,master")) == (
        "10.0.0.2", 6380)


# ---------------------------------------------------------------- the blocking query


def test_query_primary_finds_the_primary(steady_shard):
    assert query_primary(steady_shard.sentinel_addresses, MASTER, 2.0) == addr(
        steady_shard.primary)


def test_query_primary_skips_an_unreachable_sentinel(steady_shard):
    sentinels = [(HOST, free_port()), *steady_shard.sentinel_addresses]
    assert query_primary(sentinels, MASTER, 2.0) == addr(steady_shard.primary)


def test_query_primary_is_none_for_an_unknown_master(steady_shard):
    assert query_primary(steady_shard.sentinel_addresses, "no-such-master", 2.0) is None


def test_query_primary_raises_when_no_sentinel_answers():
    with pytest.raises(SentinelUnavailable, match="no sentinel answered"):
        query_primary([(HOST, free_port()), (HOST, free_port())], MASTER, 0.5)


# ---------------------------------------------------------------- the watcher, steady state


async def test_watcher_reports_the_primary_at_start(steady_shard, nursery):
    reports = Reports()
    nursery.start_soon(SentinelWatcher(steady_shard.sentinel_addresses, MASTER, reports).run)
    await reports.until(lambda v: v, 5, "first report")
    assert reports.values == [addr(steady_shard.primary)]


async def test_watcher_reports_none_for_an_unknown_master(steady_shard, nursery):
    reports = Reports()
    nursery.start_soon(
        SentinelWatcher(steady_shard.sentinel_addresses, "no-such-master", reports).run)
    await reports.until(lambda v: v, 5, "first report")
    assert reports.values == [None]


async def test_watcher_starts_with_the_next_sentinel_when_one_is_unreachable(steady_shard,
                                                                             nursery):
    reports = Reports()
    dead = (HOST, free_port())
    watcher = SentinelWatcher([dead, *steady_shard.sentinel_addresses], MASTER, reports)
    nursery.start_soon(watcher.run)
    await reports.until(lambda v: v, 5, "first report")
    assert reports.values == [addr(steady_shard.primary)]
    assert watcher.sentinel == steady_shard.sentinel_addresses[0]


async def test_watcher_leaves_a_sentinel_that_stops_answering(steady_shard, nursery):
    reports = Reports()
    watcher = SentinelWatcher(steady_shard.sentinel_addresses, MASTER, reports,
                              connect_timeout=0.3, poll_interval=0.3)
    nursery.start_soon(watcher.run)
    await eventually(lambda: watcher.sentinel is not None, 5, "following a sentinel")
    hung = steady_shard.sentinels[steady_shard.sentinel_addresses.index(watcher.sentinel)]
    os.kill(hung.proc.pid, signal.SIGSTOP)
    try:
        await eventually(lambda: watcher.sentinel not in (None, (hung.host, hung.port)), 5,
                         "moving to another sentinel")
    finally:
        os.kill(hung.proc.pid, signal.SIGCONT)
    assert reports.values == [addr(steady_shard.primary)]  # no change reported meanwhile


async def test_watcher_notices_a_change_that_came_without_an_event(steady_shard, spare_node,
                                                                   sentinel_binary, nursery):
    with start_sentinel(monitors=[(MASTER, steady_shard.primary, 1)],
                        binary=sentinel_binary) as lone:
        reports = Reports()
        nursery.start_soon(SentinelWatcher([(HOST, lone.port)], MASTER, reports,
                                           poll_interval=0.2).run)
        await reports.until(lambda v: v, 5, "first report")
        # re-pointing a sentinel by hand publishes no +switch-master
        redis_command(HOST, lone.port, "SENTINEL", "REMOVE", MASTER)
        redis_command(HOST, lone.port, "SENTINEL", "MONITOR", MASTER, HOST, spare_node.port, 1)
        await reports.until(lambda v: v[-1] == addr(spare_node), 5, "the re-pointed primary")


async def test_watcher_authenticates_with_the_sentinel_password(steady_shard, sentinel_binary,
                                                                nursery):
    with start_sentinel(monitors=[(MASTER, steady_shard.primary, 1)], password="s3cret",
                        binary=sentinel_binary) as guarded:
        reports = Reports()
        nursery.start_soon(SentinelWatcher([(HOST, guarded.port)], MASTER, reports,
                                           password="s3cret").run)
        await reports.until(lambda v: v, 5, "first report")
        assert reports.values == [addr(steady_shard.primary)]


async def test_cancelling_the_watcher_ends_it_and_closes_its_connections(steady_shard):
    gc.collect()  # earlier tests' garbage must not close files during the count
    fds_before = len(os.listdir("/proc/self/fd"))
    reports = Reports()
    watcher = SentinelWatcher(steady_shard.sentinel_addresses, MASTER, reports)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            await reports.until(lambda v: v, 5, "first report")
            nursery.cancel_scope.cancel()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds_before


# ---------------------------------------------------------------- failovers


async def test_watcher_follows_a_failover_to_the_replica(fresh_shard, nursery):
    shard = fresh_shard
    reports = Reports()
    nursery.start_soon(SentinelWatcher(shard.sentinel_addresses, MASTER, reports).run)
    await reports.until(lambda v: v, 5, "first report")
    killed_at = time.monotonic()
    shard.primary.kill()
    reported_at = await reports.until(lambda v: v[-1] == addr(shard.replica),
                                      FAILOVER_DEADLINE, "the replica reported", shard.logs())
    print(f"failover: kill to new primary reported in {reported_at - killed_at:.2f}s; "
          f"reports {reports.values}")
    assert reports.values[0] == addr(shard.primary)
    assert set(reports.values[1:-1]) <= {None}  # at most "no primary" in between


async def test_writes_the_replica_acknowledged_are_on_the_reported_new_primary(fresh_shard,
                                                                               nursery):
    shard = fresh_shard
    client = direct(shard.primary)
    for i in range(100):
        client.set(f"key:{i}", i)
    assert client.execute_command("WAIT", 1, 1000) == 1
    reports = Reports()
    nursery.start_soon(SentinelWatcher(shard.sentinel_addresses, MASTER, reports).run)
    await reports.until(lambda v: v, 5, "first report")
    shard.primary.kill()
    await reports.until(lambda v: v[-1] not in (None, addr(shard.primary)),
                        FAILOVER_DEADLINE, "a new primary reported", shard.logs())
    new_primary = direct(shard.replica)
    assert addr(shard.replica) == reports.values[-1]
    assert new_primary.info("replication")["role"] == "master"
    assert [new_primary.get(f"key:{i}") for i in range(100)] == [
        str(i).encode() for i in range(100)]


async def test_watcher_follows_a_failover_after_its_sentinel_is_stopped(fresh_shard, nursery):
    shard = fresh_shard
    reports = Reports()
    watcher = SentinelWatcher(shard.sentinel_addresses, MASTER, reports)
    nursery.start_soon(watcher.run)
    await eventually(lambda: watcher.sentinel is not None, 5, "following a sentinel")
    followed = watcher.sentinel
    shard.sentinels[shard.sentinel_addresses.index(followed)].stop()
    await eventually(lambda: watcher.sentinel not in (None, followed), 5,
                     "moving to another sentinel")
    shard.primary.kill()  # two sentinels of three remain: still a quorum and a majority
    await reports.until(lambda v: v[-1] == addr(shard.replica), FAILOVER_DEADLINE,
                        "the replica reported", shard.logs())


async def test_watcher_reports_no_primary_while_it_is_down_and_it_again_once_back(
        lone_primary, nursery):
    shard = lone_primary
    reports = Reports()
    nursery.start_soon(SentinelWatcher(shard.sentinel_addresses, MASTER, reports).run)
    await reports.until(lambda v: v, 5, "first report")
    shard.primary.kill()
    await reports.until(lambda v: v[-1] is None, FAILOVER_DEADLINE, "no primary reported",
                        shard.logs())
    shard.restart_primary()
    await reports.until(lambda v: v[-1] is not None, FAILOVER_DEADLINE, "primary back",
                        shard.logs())
    assert reports.values == [addr(shard.primary), None, addr(shard.primary)]
