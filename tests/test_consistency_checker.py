"""The consistency checker (bench/consistency.py) checked against one plain redis-server.

A checker that never fires proves nothing, so each violation kind is injected behind the
workload's back (straight to the node) and must be caught, naming the tampered key, with no
other violation reported. Failures the workload sees (connections killed under it, an
endpoint that refuses connections) must be counted, and their unknown outcomes accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from helpers import direct

from bench import consistency as cc
from bench.consistency import Record, Report, ValueState, Workload

KEYS = 400
CLIENTS = 4
# Short TTLs expire during or soon after a run; long ones outlive it.
TTLS = (100, 20_000)


@pytest.fixture
def node(make_nodes):
    return make_nodes(1)[0]


def small_run(node, *, ops: int = 2000, **options) -> Record:
    space = cc.prefill(node.address, KEYS, clients=CLIENTS)
    return cc.run(node.address, keyspace=space, prefilled=True, ops=ops, ttl_ms=TTLS,
                  seed=7, **options)


def pick(record: Record, want: Callable[[ValueState], bool], count: int = 1) -> list[str]:
    """Keys whose expected state is settled (one acknowledged state) and matches ``want``."""
    keys = [k for k, states in record.values.items()
            if len(states) == 1 and states[0].acked and want(states[0])]
    if len(keys) < count:
        pytest.fail(f"the run left only {len(keys)} keys of the wanted kind")
    return keys[:count]


def flagged(report: Report, kind: str) -> set[str]:
    return {v.key for v in report.examples if v.kind == kind}


def assert_only(report: Report, kind: str, keys: list[str]) -> None:
    """Exactly the injected keys are reported, under ``kind``, and nothing else."""
    assert report.violations[kind] == len(keys), report.summary()
    assert flagged(report, kind) == set(keys), report.summary()
    others = {k: n for k, n in report.violations.items() if k != kind and n}
    assert not others, report.summary()
    assert not report.ok


# -- the happy path ---------------------------------------------------------------------


def test_clean_run_has_no_violations(node):
    space = cc.prefill(node.address, KEYS, clients=CLIENTS)
    other = direct(node)
    with Workload(node.address, keyspace=space, prefilled=True, ttl_ms=TTLS, seed=1) as w:
        # The caller works alongside (here: writes keys of its own) while clients run.
        assert w.wait_until(lambda: w.acknowledged() >= 1500, timeout=10)
        mark = w.elapsed()
        other.set("not-a-checker-key", "x")
        assert w.wait_until(lambda: w.acknowledged() >= 3000, timeout=10)
        record = w.stop()
    report = cc.verify(node.address, record)
    assert report.ok, report.summary()
    assert report.violations == dict.fromkeys(cc.KINDS, 0)
    assert report.errors == {} and report.unknown_outcomes == 0
    assert report.keys_checked == KEYS
    assert report.ttl_keys_checked > 0
    assert set(report.ops) == {"get", "set", "set_ttl", "incr", "del"}
    assert report.total_ops >= 3000 and report.throughput > 0
    assert sum(report.series) * report.resolution_s == pytest.approx(report.total_ops)
    assert report.per_second()
    ratio = cc.throughput_ratio(report, (0.0, mark), (mark, report.duration_s))
    assert 0 < ratio < 100
    assert "OK" in report.summary()


def test_run_without_prefill_starts_from_absent_keys(node):
    record = cc.run(node.address, keys=200, clients=2, ops=800, ttl_ms=TTLS)
    report = cc.verify(node.address, record)
    assert report.ok, report.summary()
    assert report.keys_checked == 200


def test_cli_prefills_runs_and_verifies(node, capsys):
    code = cc.main(["--target", node.address, "--clients", "2", "--keys", "300",
                    "--ops", "600"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "consistency: OK" in out and "stale_read=0" in out


# -- each violation kind is caught ------------------------------------------------------


def test_lost_write_is_caught(node):
    record = small_run(node)
    r = direct(node)
    gone, older = pick(record, lambda s: s.cause == "set" and s.ttl_ms is None, count=2)
    r.delete(gone)
    # An older value put back: the acknowledged write is lost just the same.
    r.set(older, record.keyspace.prefill_value(older))
    # A prefilled key nobody touched is still the workload's to lose.
    untouched, = pick(record, lambda s: s.cause == "prefill")
    r.delete(untouched)
    report = cc.verify(node.address, record)
    assert_only(report, cc.LOST_WRITE, [gone, older, untouched])


def test_deleted_key_back_is_caught(node):
    record = small_run(node)
    back, = pick(record, lambda s: s.cause == "del")
    direct(node).set(back, b"resurrected")
    report = cc.verify(node.address, record)
    assert_only(report, cc.DELETED_BACK, [back])


def test_counter_drift_is_caught(node):
    record = small_run(node)
    r = direct(node)
    extra, lost = [k for k, (lo, hi) in record.counters.items() if lo == hi][:2]
    r.incr(extra)
    r.decr(lost)
    report = cc.verify(node.address, record)
    assert_only(report, cc.COUNTER, [extra, lost])


def test_ttl_changes_are_caught(node):
    record = small_run(node)
    r = direct(node)
    now = time.monotonic()
    longer, persisted = pick(record, lambda s: s.cause == "set_ttl" and s.latest - now > 5
                             and s.latest - s.earliest < 0.05, count=2)
    # 300 ms later than acknowledged: beyond the 100 ms slack.
    r.pexpire(longer, r.pttl(longer) + 300)
    r.persist(persisted)
    gained, = pick(record, lambda s: s.cause == "set")
    r.expire(gained, 1000)
    ctr = next(iter(record.counters))
    r.expire(ctr, 1000)
    report = cc.verify(node.address, record)
    assert_only(report, cc.TTL, [longer, persisted, gained, ctr])


def test_ttl_within_slack_is_accepted(node):
    record = small_run(node)
    r = direct(node)
    now = time.monotonic()
    nudged, = pick(record, lambda s: s.cause == "set_ttl" and s.latest - now > 5
                   and s.latest - s.earliest < 0.01)
    r.pexpire(nudged, r.pttl(nudged) + 60)
    report = cc.verify(node.address, record)
    assert report.ok, report.summary()
    assert 40 < report.ttl_max_deviation_ms <= 100


def test_key_alive_after_its_deadline_is_caught(node):
    # About TTLs, so it waits (polling) for a deadline to pass.
    record = small_run(node)
    states = {k: s[0] for k, s in record.values.items()
              if len(s) == 1 and s[0].cause == "set_ttl"}
    key = min(states, key=lambda k: states[k].latest)
    deadline = states[key].latest + 0.15
    while time.monotonic() < deadline:
        time.sleep(0.01)
    assert direct(node).get(key) is None
    direct(node).set(key, states[key].value)
    report = cc.verify(node.address, record)
    assert_only(report, cc.TTL, [key])
    assert "after its deadline" in next(v.detail for v in report.examples if v.key == key)


def test_stale_reads_and_lost_increments_are_caught_during_the_run(node):
    space = cc.prefill(node.address, 80, clients=2)
    r = direct(node)
    with Workload(node.address, keyspace=space, prefilled=True, ttl_ms=TTLS, seed=3) as w:
        assert w.wait_until(lambda: w.acknowledged() >= 300, timeout=10)
        pipe = r.pipeline(transaction=False)
        for key in space.value_keys(0):
            pipe.set(key, space.prefill_value(key))  # an older acknowledged value
        for key in space.counter_keys(0):
            pipe.decrby(key, 1000)
        pipe.execute()
        assert w.wait_until(
            lambda: w.violations_seen()[cc.STALE_READ] and w.violations_seen()[cc.COUNTER],
            timeout=10)
        record = w.stop()
    assert record.violation_counts[cc.STALE_READ] >= 1
    assert record.violation_counts[cc.COUNTER] >= 1
    stale = [v for v in record.violations if v.kind == cc.STALE_READ]
    assert all(v.key.startswith("cc:0:") and v.at is not None for v in stale)
    report = cc.verify(node.address, record)
    assert not report.ok and report.violations[cc.STALE_READ] >= 1


# -- errors and unknown outcomes --------------------------------------------------------


def test_killed_connections_count_as_errors_with_unknown_outcomes(node):
    space = cc.prefill(node.address, 200, clients=CLIENTS)
    killer = direct(node)

    def kill_clients() -> bool:
        killer.client_kill_filter(_type="normal", skipme=True)
        return w.error_count() >= 20

    with Workload(node.address, keyspace=space, prefilled=True, ttl_ms=TTLS, seed=5) as w:
        assert w.wait_until(lambda: w.acknowledged() >= 200, timeout=10)
        assert w.wait_until(kill_clients, timeout=10)
        mark = w.acknowledged()
        assert w.wait_until(lambda: w.acknowledged() >= mark + 500, timeout=10)
        record = w.stop()
    report = cc.verify(node.address, record)
    assert report.ok, report.summary()
    assert report.errors.get("connection", 0) >= 1, report.errors
    assert report.unknown_outcomes >= 1
    assert sum(report.error_series) > 0


def test_refused_connections_are_not_unknown_outcomes(node):
    from backends.local_nodes import free_port

    dead = f"127.0.0.1:{free_port()}"
    record = cc.run(dead, keys=100, clients=2, duration=0.2)
    assert record.errors.get(cc.NOT_SENT, 0) > 0 and record.total_ops == 0
    assert record.unknown_outcomes == 0
    # Nothing was sent, so every key is still expected absent.
    report = cc.verify(node.address, record)
    assert report.ok, report.summary()


# -- the model of unknown outcomes ------------------------------------------------------


def test_unknown_write_allows_either_outcome_until_the_next_acknowledged_one():
    t = 100.0
    acked = ValueState(b"a", cause="set", at=t)
    maybe_b = ValueState(b"b", cause="set", acked=False, at=t + 1)
    maybe_gone = ValueState(None, cause="del", acked=False, at=t + 2)
    states = [acked, maybe_b, maybe_gone]
    for value, pttl in ((b"a", -1), (b"b", -1), (None, -2)):
        assert cc.check_value(states, value, pttl, t + 3, t + 3, 100)[0] is None
        assert cc.read_matches(states, value, t + 3, t + 3, 0.1)
    assert cc.check_value(states, b"c", -1, t + 3, t + 3, 100)[0] == cc.LOST_WRITE
    assert not cc.read_matches(states, b"c", t + 3, t + 3, 0.1)
    # Only the acknowledged value: an unknown write before it no longer counts.
    assert cc.check_value([ValueState(b"d", cause="set")], b"b", -1, t, t, 100)[0] \
        == cc.LOST_WRITE
    # An unknown DEL may or may not have removed the key: DEL's own reply may say either.
    assert cc.exists_matches(states, True, t + 3, t + 3, 0.1)
    assert cc.exists_matches(states, False, t + 3, t + 3, 0.1)
    assert not cc.exists_matches([acked], False, t + 3, t + 3, 0.1)


def test_ttl_window_bounds():
    # SET k v PX 1000 sent at 10.0, acknowledged at 10.2: deadline within [11.0, 11.2].
    s = ValueState(b"v", 1000, 11.0, 11.2, "set_ttl")
    # Read between 10.5 and 10.6: PTTL within [400, 700] ms, give or take the slack.
    assert cc.check_value([s], b"v", 650, 10.5, 10.6, 100)[0] is None
    assert cc.check_value([s], b"v", 790, 10.5, 10.6, 100)[0] is None
    assert cc.check_value([s], b"v", 850, 10.5, 10.6, 100)[0] == cc.TTL
    assert cc.check_value([s], b"v", 250, 10.5, 10.6, 100)[0] == cc.TTL
    assert cc.check_value([s], b"v", -1, 10.5, 10.6, 100)[0] == cc.TTL
    assert cc.check_value([s], None, -2, 10.5, 10.6, 100)[0] == cc.LOST_WRITE
    # Around the deadline either is fine; well after it, only absence.
    assert cc.check_value([s], None, -2, 11.05, 11.1, 100)[0] is None
    assert cc.check_value([s], b"v", 100, 11.05, 11.1, 100)[0] is None
    assert cc.check_value([s], b"v", -2, 11.05, 11.1, 100)[0] is None
    assert cc.check_value([s], b"v", 5, 12.0, 12.0, 100)[0] == cc.TTL


def test_counter_bounds_follow_unknown_increments():
    assert cc.check_counter(5, 7, b"5", -1)[0] is None
    assert cc.check_counter(5, 7, b"7", -1)[0] is None
    assert cc.check_counter(5, 7, b"8", -1)[0] == cc.COUNTER
    assert cc.check_counter(5, 7, b"4", -1)[0] == cc.COUNTER
    assert cc.check_counter(5, 5, None, -2)[0] == cc.COUNTER
    assert cc.check_counter(0, 0, None, -2)[0] is None
    assert cc.check_counter(5, 5, b"5", 900)[0] == cc.TTL


def test_error_kinds():
    assert cc.error_kind(redis.ResponseError("TRYAGAIN moving")) == "error:TRYAGAIN"
    assert cc.error_kind(redis.ConnectionError("Error 111 connecting to h:1.")) == cc.NOT_SENT
    assert cc.error_kind(redis.ConnectionError("Connection closed by server.")) == "connection"
    assert cc.error_kind(redis.TimeoutError("Timeout reading from socket")) == "timeout"
    assert cc.error_kind(redis.TimeoutError("Timeout connecting to server")) == cc.NOT_SENT
    assert cc.error_kind(cc.UnexpectedReply("INCR replied b'x'")) == "unexpected_reply"


def test_throughput_windows():
    report = Report(
        ok=True, violations={}, examples=[], errors={}, error_examples=[],
        unknown_outcomes=0, ops={}, total_ops=0, duration_s=4.0, throughput=0.0,
        resolution_s=0.5, series=[100.0] * 4 + [40.0] * 4, error_series=[],
        keys_checked=0, ttl_keys_checked=0, ttl_max_deviation_ms=0.0, verify_s=0.0)
    assert cc.throughput_in(report, (0.0, 2.0)) == pytest.approx(100.0)
    assert cc.throughput_in(report, (1.75, 2.25)) == pytest.approx(70.0)
    assert cc.throughput_ratio(report, (0.0, 2.0), (2.0, 4.0)) == pytest.approx(0.4)
    assert report.per_second() == [100.0, 100.0, 40.0, 40.0]
