"""Consistency checker: a write/read workload whose every acknowledged result is verified.

Issue 6 asks for proof that online rebalancing loses nothing under load and faults. The
workload runs against any Redis-protocol endpoint (a ringleader proxy, or a plain
redis-server when testing the checker itself) while the caller does something disruptive
(add a node, kill the proxy, restart a storage node), and records every acknowledged
result; ``verify`` then reads every key back and compares.

Exactness comes from ownership: each client thread has its own disjoint keys, so with one
synchronous writer per key the expected state of every key is known exactly. A command that
fails is *not* acknowledged: its outcome is unknown (it may or may not have been applied), so
the key's expected state becomes a set of candidates until the next acknowledged write
settles it. A command that provably never left the client (the connection could not be
opened) changes nothing.

Keys are ``cc:<client>:<n>`` (values) and ``cc:<client>:ctr:<n>`` (counters), without hash
tags, so that they spread over every node of a ring.

Usage from a test::

    keyspace = prefill(proxy.address, 50_000)
    with Workload(proxy.address, keyspace=keyspace, prefilled=True) as w:
        ...  # add a node, kill the proxy...
        record = w.stop()
    report = verify(proxy.address, record)
    assert report.ok, report.summary()

From a shell: ``python -m bench.consistency --target HOST:PORT``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Violation kinds, in the order reports list them.
LOST_WRITE = "lost_write"  # an acknowledged value is gone or replaced by another value
DELETED_BACK = "deleted_back"  # a key that must not exist (deleted, never written) exists
COUNTER = "counter"  # a counter differs from its acknowledged increments
TTL = "ttl"  # a TTL outside its window, lost, gained, or a key alive past its deadline
STALE_READ = "stale_read"  # during the run, a read disagreed with the last acknowledged write
KINDS = (LOST_WRITE, DELETED_BACK, COUNTER, TTL, STALE_READ)

# Error kinds whose command provably never reached the server.
NOT_SENT = "connect"

ROUNDING_MS = 2.0  # PTTL and the server clock count whole milliseconds
MAX_EXAMPLES = 5  # per kind
DEFAULT_MIX = {"get": 0.40, "set": 0.35, "incr": 0.20, "del": 0.05}


class Flag(Protocol):
    """Anything with ``is_set()``: ``threading.Event``, ``multiprocessing.Event``."""

    def is_set(self) -> bool: ...


def parse_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"target must be HOST:PORT, not {target!r}")
    return host, int(port)


def connect(target: str, *, password: str | None = None,
            socket_timeout: float = 10.0) -> redis.Redis:
    """A client that never retries on its own: a hidden retry would turn an unknown outcome
    into a silent double write (an INCR counted twice) and hide client-visible errors."""
    host, port = parse_target(target)
    return redis.Redis(
        host=host, port=port, password=password, protocol=2,
        socket_timeout=socket_timeout, socket_connect_timeout=min(2.0, socket_timeout),
        retry=Retry(NoBackoff(), 0),
    )


# ---------------------------------------------------------------------------------------
# The key space


def pad(head: bytes, size: int) -> bytes:
    return head + b"." * (size - len(head)) if len(head) < size else head


@dataclass(frozen=True)
class KeySpace:
    """Which client owns which keys; ``prefill`` and ``Workload`` must agree on it, so it is
    passed from one to the other rather than rebuilt from loose parameters."""

    keys: int = 50_000
    clients: int = 8
    prefix: str = "cc"
    counter_share: float = 0.2
    value_size: int = 32

    def __post_init__(self) -> None:
        if self.clients < 1 or self.keys < 2 * self.clients:
            raise ValueError("need at least one client and two keys per client")
        if not 0.0 <= self.counter_share < 1.0:
            raise ValueError("counter_share must be in [0, 1)")

    def owned(self, client: int) -> int:
        return self.keys // self.clients + (1 if client < self.keys % self.clients else 0)

    def counter_count(self, client: int) -> int:
        owned = self.owned(client)
        return min(owned - 1, round(owned * self.counter_share))

    def value_keys(self, client: int) -> list[str]:
        count = self.owned(client) - self.counter_count(client)
        return [f"{self.prefix}:{client}:{n}" for n in range(count)]

    def counter_keys(self, client: int) -> list[str]:
        return [f"{self.prefix}:{client}:ctr:{n}" for n in range(self.counter_count(client))]

    def prefill_value(self, key: str) -> bytes:
        return pad(b"p:" + key.encode(), self.value_size)

    def prefill_counter(self, key: str) -> int:
        # Distinct per key, so that a counter swapped or reset to zero shows.
        return 1000 + int(key.rpartition(":")[2])


def prefill(target: str, keys: int | KeySpace = 50_000, *, clients: int = 8,
            prefix: str = "cc", counter_share: float = 0.2, value_size: int = 32,
            password: str | None = None, batch: int = 1000) -> KeySpace:
    """Write every key once (no TTL), so that a migration has data to move and a lost key
    shows even if the workload never touches it. Pass the returned key space to
    ``Workload(..., keyspace=..., prefilled=True)``."""
    space = keys if isinstance(keys, KeySpace) else KeySpace(
        keys, clients, prefix, counter_share, value_size)
    conn = connect(target, password=password)
    try:
        pending: list[tuple[str, bytes | int]] = []
        for client in range(space.clients):
            pending += [(k, space.prefill_value(k)) for k in space.value_keys(client)]
            pending += [(k, space.prefill_counter(k)) for k in space.counter_keys(client)]
        for start in range(0, len(pending), batch):
            pipe = conn.pipeline(transaction=False)
            for key, value in pending[start:start + batch]:
                pipe.execute_command("SET", key, value)
            pipe.execute()
    finally:
        conn.close()
    return space


# ---------------------------------------------------------------------------------------
# What a key may hold


@dataclass(frozen=True, slots=True)
class ValueState:
    """One state a value key may be in. Deadlines are bounds, in ``time.monotonic()``
    seconds: the server applied the TTL somewhere between sending and acknowledgement."""

    value: bytes | None  # None: absent
    ttl_ms: int | None = None
    earliest: float = 0.0  # deadline bounds (TTL states only)
    latest: float = 0.0
    cause: str = "initial"  # initial, prefill, set, set_ttl, del
    acked: bool = True
    at: float = 0.0  # when acknowledged (or when its outcome became unknown)

    def may_be_present(self, t_send: float, slack: float) -> bool:
        """Present at some server time ≥ ``t_send``?"""
        if self.value is None:
            return False
        return self.ttl_ms is None or self.latest + slack > t_send

    def may_be_absent(self, t_ack: float, slack: float) -> bool:
        """Absent at some server time ≤ ``t_ack`` (deleted, or possibly expired)?"""
        if self.value is None:
            return True
        return self.ttl_ms is not None and self.earliest - slack <= t_ack


def read_matches(states: Sequence[ValueState], reply: bytes | None, t_send: float,
                 t_ack: float, slack: float) -> bool:
    """Could a GET sent at ``t_send`` and answered at ``t_ack`` return ``reply``?"""
    for s in states:
        if reply is None:
            if s.may_be_absent(t_ack, slack):
                return True
        elif s.value == reply and s.may_be_present(t_send, slack):
            return True
    return False


def exists_matches(states: Sequence[ValueState], existed: bool, t_send: float,
                   t_ack: float, slack: float) -> bool:
    """Could a DEL have found the key (``existed``) or not? DEL's reply is a read too."""
    if existed:
        return any(s.may_be_present(t_send, slack) for s in states)
    return any(s.may_be_absent(t_ack, slack) for s in states)


def check_value(states: Sequence[ValueState], value: bytes | None, pttl: int, r_send: float,
                r_ack: float, slack_ms: float) -> tuple[str | None, str, float]:
    """Judge a key read back (GET and PTTL, both between ``r_send`` and ``r_ack``) against
    its candidate states: ``(violation kind or None, detail, TTL deviation in ms)``. The
    deviation is how far the server's deadline lies outside the exact window the client
    computed (0 when inside); MIGRATE restores a relative TTL, so a moved key's deadline
    shifts later by the transfer time, which the slack absorbs."""
    slack = slack_ms / 1000.0
    best: float | None = None
    for s in states:
        if value is None:
            if pttl == -2 and s.may_be_absent(r_ack, slack):
                return None, "", 0.0
            continue
        if s.value != value or not s.may_be_present(r_send, slack):
            continue
        if s.ttl_ms is None:
            if pttl == -1:
                return None, "", 0.0
            continue
        if pttl == -2 and s.may_be_absent(r_ack, slack):
            return None, "", 0.0  # expired between the GET and the PTTL
        if pttl >= 0:
            lo = (s.earliest - r_ack) * 1000.0
            hi = (s.latest - r_send) * 1000.0
            deviation = max(0.0, lo - pttl, pttl - hi)
            if deviation <= slack_ms + ROUNDING_MS:
                best = deviation if best is None else min(best, deviation)
    if best is not None:
        return None, "", best
    return _classify(states, value, pttl, r_send, r_ack, slack)


def _classify(states: Sequence[ValueState], value: bytes | None, pttl: int, r_send: float,
              r_ack: float, slack: float) -> tuple[str, str, float]:
    expected = " or ".join(_describe(s, r_send) for s in states)
    same = [s for s in states if value is not None and s.value == value]
    if same:
        s = same[-1]
        if s.ttl_ms is None:
            return TTL, f"PTTL {pttl}, expected -1 (set without TTL)", 0.0
        if not s.may_be_present(r_send, slack):
            late = (r_send - s.latest) * 1000.0
            return TTL, f"still present {late:.0f} ms after its deadline (TTL {s.ttl_ms} ms)", late
        lo = (s.earliest - r_ack) * 1000.0
        hi = (s.latest - r_send) * 1000.0
        deviation = max(lo - pttl, pttl - hi) if pttl >= 0 else float("inf")
        return TTL, f"PTTL {pttl}, expected within [{lo:.0f}, {hi:.0f}] ms", deviation
    if value is None:
        what = "absent" if pttl == -2 else f"not a string (PTTL {pttl})"
        return LOST_WRITE, f"key {what}, expected {expected}", 0.0
    if all(s.value is None for s in states):
        return DELETED_BACK, f"holds {_show(value)}, expected {expected}", 0.0
    return LOST_WRITE, f"holds {_show(value)}, expected {expected}", 0.0


def check_counter(lo: int, hi: int, value: bytes | None, pttl: int) -> tuple[str | None, str]:
    """A counter must hold its acknowledged increments, plus any subset of the unknown ones
    (``lo``..``hi``), and never carry a TTL."""
    if value is None:
        if lo == 0 and pttl == -2:
            return None, ""
        return COUNTER, f"absent, expected {_span(lo, hi)}"
    try:
        number = int(value)
    except ValueError:
        return COUNTER, f"holds {_show(value)}, expected {_span(lo, hi)}"
    if not lo <= number <= hi:
        return COUNTER, f"holds {number}, expected {_span(lo, hi)}"
    if pttl != -1:
        return TTL, f"counter has PTTL {pttl}, expected -1"
    return None, ""


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _show(value: bytes | None) -> str:
    if value is None:
        return "nil"
    return repr(value.rstrip(b".")[:40])


def _describe(s: ValueState, now: float) -> str:
    what = _show(s.value) if s.value is not None else f"absent ({s.cause})"
    if s.ttl_ms is not None:
        what += f" with TTL {s.ttl_ms} ms (deadline in {(s.latest - now) * 1000:.0f} ms)"
    return what + ("" if s.acked else " [unknown outcome]")


# ---------------------------------------------------------------------------------------
# The record of a run


@dataclass
class Violation:
    kind: str
    key: str
    detail: str
    at: float | None = None  # seconds since the run started (violations seen during the run)

    def __str__(self) -> str:
        when = f" at {self.at:.2f}s" if self.at is not None else ""
        return f"{self.kind} {self.key}{when}: {self.detail}"


@dataclass
class Record:
    """Everything acknowledged during a run, and what the clients saw go wrong."""

    target: str
    keyspace: KeySpace
    prefilled: bool
    started: float  # time.monotonic()
    ended: float
    resolution_s: float
    ttl_slack_ms: float
    values: dict[str, list[ValueState]]
    counters: dict[str, tuple[int, int]]
    ops: Counter[str]  # acknowledged operations by kind
    errors: Counter[str]  # client-visible errors by kind
    error_examples: list[str]
    unknown_outcomes: int
    buckets: list[int]  # acknowledged ops per resolution_s, from ``started``
    error_buckets: list[int]
    violation_counts: Counter[str]  # seen during the run
    violations: list[Violation]

    @property
    def duration(self) -> float:
        return self.ended - self.started

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())


def _bump(series: list[int], index: int) -> None:
    if index >= len(series):
        series.extend([0] * (index + 1 - len(series)))
    series[index] += 1


class UnexpectedReply(redis.RedisError):
    """A reply of the wrong type for its command (SET not OK, INCR not an integer...)."""


def _is_ok(reply: Any) -> bool:
    return reply is True or reply == b"OK"


def _is_int(reply: Any) -> bool:
    return isinstance(reply, int) and not isinstance(reply, bool)


def _is_bulk(reply: Any) -> bool:
    return reply is None or isinstance(reply, bytes)


def error_kind(exc: Exception) -> str:
    """Group errors the way an operator reads them: the first word of an error reply
    (ERR, TRYAGAIN, MOVED...), timeouts, broken connections, and connections never opened."""
    message = str(exc)
    if isinstance(exc, redis.ResponseError):
        return "error:" + (message.split(" ", 1)[0] or "?")
    if isinstance(exc, UnexpectedReply):
        return "unexpected_reply"
    if "connecting to" in message:
        return NOT_SENT
    if isinstance(exc, redis.TimeoutError):
        return "timeout"
    if isinstance(exc, redis.ConnectionError):
        return "connection"
    return "other:" + type(exc).__name__


class _Client(threading.Thread):
    """One synchronous client over its own keys; nothing here is shared while running."""

    def __init__(self, workload: Workload, index: int, quota: int | None) -> None:
        super().__init__(name=f"consistency-client-{index}", daemon=True)
        self.w = workload
        self.index = index
        self.quota = quota
        self.rng = random.Random(workload.seed * 1_000_003 + index)
        space = workload.keyspace
        self.value_keys = space.value_keys(index)
        self.counter_keys = space.counter_keys(index)
        if workload.prefilled:
            self.values = {k: [ValueState(space.prefill_value(k), cause="prefill")]
                           for k in self.value_keys}
            self.counters = {k: [space.prefill_counter(k)] * 2 for k in self.counter_keys}
        else:
            self.values = {k: [ValueState(None)] for k in self.value_keys}
            self.counters = {k: [0, 0] for k in self.counter_keys}
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_examples: list[str] = []
        self.unknown = 0
        self.attempted = 0
        self.acked = 0  # plain ints: read by other threads while this one runs
        self.failed = 0
        self.buckets: list[int] = []
        self.error_buckets: list[int] = []
        self.violation_counts: Counter[str] = Counter()
        self.violations: list[Violation] = []
        self.failure: BaseException | None = None
        self.seq = 0
        self.consecutive_errors = 0
        self.conn = connect(workload.target, password=workload.password,
                            socket_timeout=workload.socket_timeout)
        mix = workload.mix
        total = sum(mix.values())
        self.thresholds: list[tuple[float, str]] = []
        acc = 0.0
        for op in ("get", "set", "incr", "del"):
            acc += mix.get(op, 0.0) / total
            self.thresholds.append((acc, op))

    def run(self) -> None:
        try:
            while not self.w._should_stop() and (self.quota is None
                                                  or self.attempted < self.quota):
                self.step()
        except BaseException as exc:  # a checker bug: stop everyone, re-raised by stop()
            self.failure = exc
            self.w._stop.set()
        finally:
            self.conn.close()

    # -- one operation ----------------------------------------------------------------

    def step(self) -> None:
        self.attempted += 1
        r = self.rng.random()
        op = next((name for limit, name in self.thresholds if r < limit), "get")
        rng = self.rng
        if op == "incr" and self.counter_keys:
            self.incr(rng.choice(self.counter_keys))
        elif op == "get":
            n = rng.randrange(len(self.value_keys) + len(self.counter_keys))
            if n < len(self.value_keys):
                self.get(self.value_keys[n])
            else:
                self.get_counter(self.counter_keys[n - len(self.value_keys)])
        elif op == "del":
            self.delete(rng.choice(self.value_keys))
        else:
            self.set(rng.choice(self.value_keys))

    def call(self, *args: Any, expect: Callable[[Any], bool]
             ) -> tuple[str | None, Any, float, float]:
        """(error kind or None, reply, send time, reply/error time). A reply of the wrong
        shape counts as an error with an unknown outcome, not as an acknowledgement."""
        t_send = time.monotonic()
        try:
            reply = self.conn.execute_command(*args)
            if not expect(reply):
                raise UnexpectedReply(f"unexpected reply {reply!r}")
        except redis.RedisError as exc:
            t_ack = time.monotonic()
            kind = error_kind(exc)
            if not isinstance(exc, redis.ResponseError | redis.ConnectionError
                              | redis.TimeoutError | UnexpectedReply):
                self.conn.connection_pool.disconnect()  # the stream may be out of step
            self.errors[kind] += 1
            self.failed += 1
            _bump(self.error_buckets, int((t_ack - self.w.started) / self.w.resolution_s))
            if len(self.error_examples) < MAX_EXAMPLES:
                self.error_examples.append(f"{args[0]} {args[1]}: {kind}: {exc}")
            if kind != NOT_SENT and args[0] in ("SET", "DEL", "INCR"):
                self.unknown += 1
            if not kind.startswith("error:"):
                self.consecutive_errors += 1  # back off while the endpoint is down
                self.w._stop.wait(min(0.1, 0.002 * 2 ** min(self.consecutive_errors, 6)))
            return kind, None, t_send, t_ack
        t_ack = time.monotonic()
        self.consecutive_errors = 0
        self.acked += 1
        _bump(self.buckets, int((t_ack - self.w.started) / self.w.resolution_s))
        return None, reply, t_send, t_ack

    def violation(self, kind: str, key: str, detail: str, t: float) -> None:
        self.violation_counts[kind] += 1
        if sum(1 for v in self.violations if v.kind == kind) < MAX_EXAMPLES:
            self.violations.append(Violation(kind, key, detail, t - self.w.started))

    def next_value(self) -> bytes:
        self.seq += 1
        return pad(f"{self.index}:{self.seq}:".encode(), self.w.keyspace.value_size)

    def set(self, key: str) -> None:
        value = self.next_value()
        ttl_ms: int | None = None
        args: list[Any] = ["SET", key, value]
        if self.rng.random() < self.w.ttl_share:
            lo, hi = self.w.ttl_ms
            ttl_ms = self.rng.randint(lo, hi)
            if ttl_ms >= 1000 and self.rng.random() < 0.5:
                ttl_ms -= ttl_ms % 1000
                args += ["EX", ttl_ms // 1000]
            else:
                args += ["PX", ttl_ms]
        err, reply, t_send, t_ack = self.call(*args, expect=_is_ok)
        if err == NOT_SENT:
            return
        if ttl_ms is None:
            state = ValueState(value, cause="set", acked=err is None, at=t_ack)
        else:
            state = ValueState(value, ttl_ms, t_send + ttl_ms / 1000, t_ack + ttl_ms / 1000,
                               "set_ttl", err is None, t_ack)
        if err is None:
            self.ops["set_ttl" if ttl_ms is not None else "set"] += 1
            self.values[key] = [state]
        else:
            self.values[key].append(state)

    def delete(self, key: str) -> None:
        err, reply, t_send, t_ack = self.call("DEL", key, expect=_is_int)
        if err == NOT_SENT:
            return
        state = ValueState(None, cause="del", acked=err is None, at=t_ack)
        if err is not None:
            self.values[key].append(state)
            return
        self.ops["del"] += 1
        states = self.values[key]
        slack = self.w.ttl_slack_ms / 1000
        if not exists_matches(states, reply >= 1, t_send, t_ack, slack):
            expected = " or ".join(_describe(s, t_send) for s in states)
            self.violation(STALE_READ, key, f"DEL replied {reply}, expected {expected}", t_ack)
        self.values[key] = [state]

    def get(self, key: str) -> None:
        err, reply, t_send, t_ack = self.call("GET", key, expect=_is_bulk)
        if err is not None:
            return
        self.ops["get"] += 1
        states = self.values[key]
        if not read_matches(states, reply, t_send, t_ack, self.w.ttl_slack_ms / 1000):
            expected = " or ".join(_describe(s, t_send) for s in states)
            self.violation(STALE_READ, key, f"GET returned {_show(reply)}, expected {expected}",
                           t_ack)

    def get_counter(self, key: str) -> None:
        err, reply, t_send, t_ack = self.call("GET", key, expect=_is_bulk)
        if err is not None:
            return
        self.ops["get"] += 1
        lo, hi = self.counters[key]
        try:
            number = 0 if reply is None else int(reply)
        except ValueError:
            number = -1
        if not (lo <= number <= hi and (reply is not None or lo == 0)):
            self.violation(STALE_READ, key,
                           f"GET returned {_show(reply)}, expected {_span(lo, hi)}", t_ack)

    def incr(self, key: str) -> None:
        err, reply, t_send, t_ack = self.call("INCR", key, expect=_is_int)
        bounds = self.counters[key]
        if err == NOT_SENT:
            return
        if err is not None:
            bounds[1] += 1
            return
        self.ops["incr"] += 1
        # INCR's reply is a read: it settles every earlier unknown increment.
        if not bounds[0] + 1 <= reply <= bounds[1] + 1:
            self.violation(COUNTER, key, f"INCR replied {reply}, expected "
                           f"{_span(bounds[0] + 1, bounds[1] + 1)}", t_ack)
        bounds[0] = bounds[1] = reply


class Workload:
    """Concurrent clients over disjoint keys, in background threads, until ``stop()``.

    ``duration`` (seconds) or ``ops`` (total operations, split evenly) or ``stop_event``
    end it early; ``stop()`` always does. ``mix`` weighs get/set/incr/del; ``ttl_share`` of
    the SETs carry a TTL drawn from ``ttl_ms`` (PX, or EX when a whole number of seconds).
    With ``prefilled=False`` the keys must not exist beforehand. ``keyspace`` (from
    ``prefill``) overrides ``clients`` and ``keys``. Clients never retry on their own and
    back off briefly (up to 100 ms) while the endpoint refuses connections.
    """

    def __init__(
        self,
        target: str,
        *,
        clients: int = 8,
        keys: int = 50_000,
        keyspace: KeySpace | None = None,
        prefilled: bool = False,
        duration: float | None = None,
        ops: int | None = None,
        stop_event: Flag | None = None,
        seed: int = 0,
        mix: dict[str, float] | None = None,
        ttl_share: float = 0.3,
        ttl_ms: tuple[int, int] = (200, 30_000),
        ttl_slack_ms: float = 100.0,
        socket_timeout: float = 10.0,
        password: str | None = None,
        resolution_s: float = 0.1,
    ) -> None:
        self.target = target
        self.keyspace = keyspace or KeySpace(keys, clients)
        self.prefilled = prefilled
        self.duration = duration
        self.total_ops = ops
        self.external_stop = stop_event
        self.seed = seed
        self.mix = dict(mix or DEFAULT_MIX)
        self.ttl_share = ttl_share
        if not 1 <= ttl_ms[0] <= ttl_ms[1]:
            raise ValueError("ttl_ms must be (low, high) with 1 <= low <= high")
        self.ttl_ms = ttl_ms
        self.ttl_slack_ms = ttl_slack_ms
        self.socket_timeout = socket_timeout
        self.password = password
        self.resolution_s = resolution_s
        self._stop = threading.Event()
        self.started = 0.0
        self._deadline: float | None = None
        self._clients: list[_Client] = []
        self._record: Record | None = None

    def start(self) -> Workload:
        n = self.keyspace.clients
        quotas: list[int | None] = [None] * n
        if self.total_ops is not None:
            quotas = [self.total_ops // n + (1 if i < self.total_ops % n else 0)
                      for i in range(n)]
        self._clients = [_Client(self, i, quotas[i]) for i in range(n)]
        self.started = time.monotonic()
        if self.duration is not None:
            self._deadline = self.started + self.duration
        for client in self._clients:
            client.start()
        return self

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._record is None:
            try:
                self.stop()
            except RuntimeError:
                if exc_type is None:
                    raise  # else the caller's own exception says more

    def _should_stop(self) -> bool:
        if self._stop.is_set():
            return True
        if self.external_stop is not None and self.external_stop.is_set():
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline

    # -- progress, readable while running ---------------------------------------------

    def elapsed(self) -> float:
        """Seconds since start, on the clock of the report's series (for throughput windows)."""
        return time.monotonic() - self.started

    def acknowledged(self) -> int:
        return sum(c.acked for c in self._clients)

    def error_count(self) -> int:
        return sum(c.failed for c in self._clients)

    def violations_seen(self) -> Counter[str]:
        """Violations the clients' own reads have caught so far (by kind)."""
        seen: Counter[str] = Counter()
        for c in self._clients:
            seen.update(dict(c.violation_counts))  # dict(): one atomic copy under the GIL
        return seen

    def running(self) -> bool:
        return any(c.is_alive() for c in self._clients)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
        """Poll ``predicate()`` until true, the workload ends, or ``timeout``; lets a test
        act at a known point of the run without sleeping a guessed time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if not self.running():
                return bool(predicate())
            time.sleep(poll)
        return bool(predicate())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the workload ends by itself (duration, ops, stop_event)."""
        end = None if timeout is None else time.monotonic() + timeout
        for client in self._clients:
            client.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self.running()

    def stop(self) -> Record:
        if self._record is not None:
            return self._record
        self._stop.set()
        for client in self._clients:
            client.join()
        ended = time.monotonic()
        failures = [c.failure for c in self._clients if c.failure is not None]
        if failures:
            raise RuntimeError("a workload client crashed") from failures[0]
        values: dict[str, list[ValueState]] = {}
        counters: dict[str, tuple[int, int]] = {}
        ops: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        violation_counts: Counter[str] = Counter()
        buckets: list[int] = []
        error_buckets: list[int] = []
        violations: list[Violation] = []
        for c in self._clients:
            values.update(c.values)
            counters.update({k: (lo, hi) for k, (lo, hi) in c.counters.items()})
            ops.update(c.ops)
            errors.update(c.errors)
            violation_counts.update(c.violation_counts)
            _add_series(buckets, c.buckets)
            _add_series(error_buckets, c.error_buckets)
            violations += c.violations
        self._record = Record(
            target=self.target, keyspace=self.keyspace, prefilled=self.prefilled,
            started=self.started, ended=ended, resolution_s=self.resolution_s,
            ttl_slack_ms=self.ttl_slack_ms, values=values, counters=counters, ops=ops,
            errors=errors, error_examples=_interleave([c.error_examples for c in self._clients]),
            unknown_outcomes=sum(c.unknown for c in self._clients), buckets=buckets,
            error_buckets=error_buckets, violation_counts=violation_counts,
            violations=_cap(violations))
        return self._record


def _add_series(total: list[int], part: list[int]) -> None:
    if len(part) > len(total):
        total.extend([0] * (len(part) - len(total)))
    for i, n in enumerate(part):
        total[i] += n


def _interleave(lists: list[list[str]], limit: int = 2 * MAX_EXAMPLES) -> list[str]:
    """A few examples from every client rather than all from the first."""
    out = [x for group in itertools.zip_longest(*lists) for x in group if x is not None]
    return out[:limit]


def _cap(violations: list[Violation]) -> list[Violation]:
    seen: Counter[str] = Counter()
    kept = []
    for v in violations:
        seen[v.kind] += 1
        if seen[v.kind] <= MAX_EXAMPLES:
            kept.append(v)
    return kept


def run(target: str, *, duration: float | None = None, ops: int | None = None,
        stop_event: Flag | None = None, **options: Any) -> Record:
    """Run the workload in the foreground until ``duration``, ``ops`` or ``stop_event``;
    ``options`` are ``Workload``'s (clients, keys, keyspace, prefilled, seed, ttl_share...)."""
    if duration is None and ops is None and stop_event is None:
        raise ValueError("give duration, ops or stop_event, or the run never ends")
    workload = Workload(target, duration=duration, ops=ops, stop_event=stop_event, **options)
    workload.start()
    workload.wait()
    return workload.stop()


# ---------------------------------------------------------------------------------------
# Verification


@dataclass
class Report:
    """The verdict on one run: ``ok`` iff no violation of any kind."""

    ok: bool
    violations: dict[str, int]
    examples: list[Violation]
    errors: dict[str, int]
    error_examples: list[str]
    unknown_outcomes: int
    ops: dict[str, int]
    total_ops: int
    duration_s: float
    throughput: float  # acknowledged ops/s over the whole run
    resolution_s: float
    series: list[float]  # acknowledged ops/s per resolution_s bucket, from the start
    error_series: list[float]
    keys_checked: int
    ttl_keys_checked: int
    ttl_max_deviation_ms: float  # worst TTL outside its exact window (0: all inside)
    verify_s: float

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def per_second(self) -> list[float]:
        """Ops/s per whole second of the run."""
        step = max(1, round(1.0 / self.resolution_s))
        out = []
        for start in range(0, len(self.series), step):
            chunk = self.series[start:start + step]
            out.append(sum(chunk) / len(chunk))
        return out

    def summary(self) -> str:
        lines = [
            f"consistency: {'OK' if self.ok else 'VIOLATIONS'}  "
            f"({self.keys_checked} keys checked, {self.ttl_keys_checked} with a TTL)",
            f"  ops: {self.total_ops} acknowledged in {self.duration_s:.1f} s "
            f"= {self.throughput:.0f} ops/s  "
            + " ".join(f"{k}={v}" for k, v in sorted(self.ops.items())),
            "  violations: " + " ".join(f"{k}={self.violations[k]}" for k in KINDS),
            f"  client-visible errors: {self.error_total}"
            + (" (" + " ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) + ")"
               if self.errors else "")
            + f", unknown outcomes: {self.unknown_outcomes}",
            f"  TTL worst deviation outside the exact window: {self.ttl_max_deviation_ms:.1f} ms"
            f"; verification took {self.verify_s:.1f} s",
        ]
        lines += [f"  ! {v}" for v in self.examples]
        lines += [f"  error: {e}" for e in self.error_examples[:MAX_EXAMPLES]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "violations": self.violations,
            "examples": [vars(v) for v in self.examples], "errors": self.errors,
            "error_examples": self.error_examples, "unknown_outcomes": self.unknown_outcomes,
            "ops": self.ops, "total_ops": self.total_ops, "duration_s": self.duration_s,
            "throughput": self.throughput, "resolution_s": self.resolution_s,
            "series": self.series, "error_series": self.error_series,
            "keys_checked": self.keys_checked, "ttl_keys_checked": self.ttl_keys_checked,
            "ttl_max_deviation_ms": self.ttl_max_deviation_ms, "verify_s": self.verify_s,
        }


def _read_batch(conn: redis.Redis, keys: list[str]) -> tuple[list, list[int], float, float]:
    pipe = conn.pipeline(transaction=False)
    pipe.execute_command("MGET", *keys)
    for key in keys:
        pipe.execute_command("PTTL", key)
    t_send = time.monotonic()
    replies = pipe.execute()
    t_ack = time.monotonic()
    return replies[0], replies[1:], t_send, t_ack


def verify(target: str, record: Record, *, ttl_slack_ms: float = 100.0, batch: int = 200,
           password: str | None = None, attempts: int = 5) -> Report:
    """Read every key back and hold it to the record. Each batch's reads happen between two
    clock readings, which bound how much of each TTL may have elapsed; nothing else is
    guessed. A batch that fails (endpoint still recovering) is retried a few times."""
    begun = time.monotonic()
    counts: Counter[str] = Counter(record.violation_counts)
    examples = list(record.violations)
    ttl_keys = 0
    worst = 0.0

    def note(kind: str, key: str, detail: str) -> None:
        counts[kind] += 1
        if sum(1 for v in examples if v.kind == kind) < MAX_EXAMPLES:
            examples.append(Violation(kind, key, detail))

    keys = list(record.values) + list(record.counters)
    conn = connect(target, password=password)
    try:
        for start in range(0, len(keys), batch):
            chunk = keys[start:start + batch]
            for attempt in range(attempts):
                try:
                    values, pttls, r_send, r_ack = _read_batch(conn, chunk)
                    break
                except redis.RedisError:
                    conn.connection_pool.disconnect()
                    if attempt == attempts - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            for key, value, pttl in zip(chunk, values, pttls, strict=True):
                if key in record.values:
                    states = record.values[key]
                    if any(s.ttl_ms is not None for s in states):
                        ttl_keys += 1
                    kind, detail, deviation = check_value(states, value, pttl, r_send, r_ack,
                                                          ttl_slack_ms)
                    worst = max(worst, deviation) if deviation != float("inf") else worst
                else:
                    lo, hi = record.counters[key]
                    kind, detail = check_counter(lo, hi, value, pttl)
                if kind is not None:
                    note(kind, key, detail)
    finally:
        conn.close()
    duration = max(record.duration, 1e-9)
    res = record.resolution_s
    return Report(
        ok=sum(counts.values()) == 0,
        violations={k: counts.get(k, 0) for k in KINDS},
        examples=examples,
        errors=dict(record.errors),
        error_examples=list(record.error_examples),
        unknown_outcomes=record.unknown_outcomes,
        ops=dict(record.ops),
        total_ops=record.total_ops,
        duration_s=record.duration,
        throughput=record.total_ops / duration,
        resolution_s=res,
        series=[n / res for n in record.buckets],
        error_series=[n / res for n in record.error_buckets],
        keys_checked=len(keys),
        ttl_keys_checked=ttl_keys,
        ttl_max_deviation_ms=worst,
        verify_s=time.monotonic() - begun,
    )


def throughput_in(report: Report, window: tuple[float, float]) -> float:
    """Mean acknowledged ops/s over ``window`` (seconds since the run started, as given by
    ``Workload.elapsed()``); buckets cut by the window count pro rata."""
    t0, t1 = window
    if t1 <= t0:
        raise ValueError(f"empty window {window}")
    res = report.resolution_s
    ops = 0.0
    for i, rate in enumerate(report.series):
        b0, b1 = i * res, (i + 1) * res
        overlap = min(b1, t1) - max(b0, t0)
        if overlap > 0:
            ops += rate * overlap
    return ops / (t1 - t0)


def throughput_ratio(report: Report, window_before: tuple[float, float],
                     window_during: tuple[float, float]) -> float:
    """Throughput during a move as a fraction of before (issue 6 targets ≥ 0.5)."""
    before = throughput_in(report, window_before)
    if before <= 0:
        raise ValueError(f"no acknowledged operation in the window before {window_before}")
    return throughput_in(report, window_during) / before


# ---------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.consistency",
        description="Prefill, run the consistency workload, verify every acknowledged result.")
    p.add_argument("--target", required=True, help="HOST:PORT of a proxy or a redis-server")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--keys", type=int, default=50_000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--ops", type=int, default=None, help="stop after this many operations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ttl-share", type=float, default=0.3, help="share of SETs with a TTL")
    p.add_argument("--ttl-slack-ms", type=float, default=100.0)
    p.add_argument("--no-prefill", action="store_true",
                   help="skip the prefill (the keys must not exist)")
    p.add_argument("--password", default=None)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    space = KeySpace(args.keys, args.clients)
    if not args.no_prefill:
        t = time.monotonic()
        prefill(args.target, space, password=args.password)
        print(f"prefilled {space.keys} keys in {time.monotonic() - t:.1f} s", file=sys.stderr)
    record = run(args.target, keyspace=space, prefilled=not args.no_prefill,
                 duration=None if args.ops else args.duration, ops=args.ops, seed=args.seed,
                 ttl_share=args.ttl_share, ttl_slack_ms=args.ttl_slack_ms,
                 password=args.password)
    report = verify(args.target, record, ttl_slack_ms=args.ttl_slack_ms,
                    password=args.password)
    print(report.summary())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report.to_dict(), fh, indent=1)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
