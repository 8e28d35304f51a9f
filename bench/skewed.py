"""Skewed load: several Python processes issuing Zipf-distributed GET/SET, node shares measured.

redis-benchmark draws keys uniformly, which hides what a sharded store suffers in practice:
a few hot keys pin their nodes. This generator draws keys from a Zipf distribution
(``bench.zipf``), pipelines them over raw sockets (RESP2, hiredis for parsing) from several
processes, and reads each node's ``INFO commandstats`` before and after, so the report
shows how unevenly the nodes were loaded (max/mean share). Later issues (hot-key
mitigation, rebalancing) reuse ``run_load`` and ``node_shares``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import hiredis

from bench.zipf import DEFAULT_KEYS, DEFAULT_S, ZipfSampler, key_name

# Commands that are not load: a proxy's health checks and the harness's own probes.
NOT_LOAD = frozenset({
    "info", "ping", "config", "config|get", "config|set", "command", "command|docs",
    "command|count", "command|info", "client", "client|setname", "client|info", "client|id",
    "client|list", "hello", "select", "dbsize", "flushall", "flushdb", "cluster", "auth",
    "readonly", "echo", "time", "scan", "migrate", "memory", "latency", "slowlog",
})


@dataclass
class LoadConfig:
    """One load run. ``get_ratio`` 0.9 means 90% GET, 10% SET."""

    host: str
    port: int
    keys: int = DEFAULT_KEYS
    s: float = DEFAULT_S
    get_ratio: float = 0.9
    processes: int = 2
    pipeline: int = 16
    duration: float = 10.0
    value_size: int = 64
    seed: int | None = None


@dataclass
class LoadResult:
    ops: int = 0
    gets: int = 0
    sets: int = 0
    errors: int = 0
    seconds: float = 0.0
    per_process: list[dict] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def _recv_replies(sock: socket.socket, reader: hiredis.Reader, count: int) -> int:
    """Read ``count`` replies; returns how many were error replies."""
    errors = 0
    while count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(262144)
            if not data:
                raise ConnectionError("target closed the connection")
            reader.feed(data)
            continue
        if isinstance(reply, hiredis.ReplyError):
            errors += 1
        count -= 1
    return errors


def _worker(config: LoadConfig, sampler: ZipfSampler, index: int, barrier,
            results) -> None:  # pragma: no cover - runs in a child process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler unwinds the parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
    seed = None if config.seed is None else config.seed * 1000 + index
    sampler.reseed(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
    rnd = random.Random(seed)
    value = b"v" * config.value_size
    pack = hiredis.pack_command
    out = {"index": index, "ops": 0, "gets": 0, "sets": 0, "errors": 0, "seconds": 0.0}
    try:
        sock = socket.create_connection((config.host, config.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = hiredis.Reader()
        ranks = sampler.stream()
        depth, get_ratio = config.pipeline, config.get_ratio
        barrier.wait(60)
        start = time.monotonic()
        deadline = start + config.duration
        gets = sets = errors = 0
        while time.monotonic() < deadline:
            batch = []
            for _ in range(depth):
                key = key_name(next(ranks))
                if rnd.random() < get_ratio:
                    batch.append(pack((b"GET", key)))
                    gets += 1
                else:
                    batch.append(pack((b"SET", key, value)))
                    sets += 1
            sock.sendall(b"".join(batch))
            errors += _recv_replies(sock, reader, depth)
        out.update(ops=gets + sets, gets=gets, sets=sets, errors=errors,
                   seconds=time.monotonic() - start)
        sock.close()
    except Exception as exc:
        out["failure"] = f"{type(exc).__name__}: {exc}"
    results.put(out)


def run_load(config: LoadConfig, sampler: ZipfSampler | None = None) -> LoadResult:
    """Run ``config.processes`` generator processes for ``config.duration`` seconds.

    Processes are forked after the sampler's table is built, so they share it; all start
    together on a barrier and every one is stopped on the way out (also on Ctrl-C).
    """
    sampler = sampler or ZipfSampler(config.keys, config.s, config.seed)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(config.processes + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(config, sampler, i, barrier, results), daemon=True)
             for i in range(config.processes)]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(120)
        outs = [results.get(timeout=config.duration + 60) for _ in procs]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.join(1)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    failures = [o["failure"] for o in outs if "failure" in o]
    if failures:
        raise RuntimeError("load generator failed: " + "; ".join(failures))
    result = LoadResult(per_process=sorted(outs, key=lambda o: o["index"]))
    for out in outs:
        result.ops += out["ops"]
        result.gets += out["gets"]
        result.sets += out["sets"]
        result.errors += out["errors"]
    result.seconds = max(o["seconds"] for o in outs)
    return result


# ---------------------------------------------------------------- node statistics


def command(host: str, port: int, *args: bytes | str, timeout: float = 5.0) -> object:
    """One command over a fresh socket, its reply parsed by hiredis."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(hiredis.pack_command(tuple(args)))
        reader = hiredis.Reader(encoding="utf-8", errors="replace")
        while True:
            reply = reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(f"{args[0]} failed on {host}:{port}: {reply}")
                return reply
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"{host}:{port} closed the connection")
            reader.feed(data)


def parse_commandstats(text: str) -> dict[str, int]:
    """``{"get": calls, "set": calls, ...}`` from the text of ``INFO commandstats``."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_"):].partition(":")
        for item in fields.split(","):
            key, _, value = item.partition("=")
            if key == "calls":
                stats[name] = int(value)
    return stats


def load_calls(stats: Mapping[str, int]) -> int:
    """Calls that are load: everything but health checks, probes and admin commands."""
    return sum(calls for name, calls in stats.items() if name not in NOT_LOAD)


def commandstats(address: str) -> dict[str, int]:
    host, _, port = address.rpartition(":")
    return parse_commandstats(str(command(host, int(port), "INFO", "commandstats")))


@dataclass
class NodeShares:
    addresses: list[str]
    ops: list[int]

    @property
    def total(self) -> int:
        return sum(self.ops)

    @property
    def shares(self) -> list[float]:
        total = self.total
        return [o / total if total else 0.0 for o in self.ops]

    @property
    def max_over_mean(self) -> float | None:
        """The busiest node's load over the average node's: 1.0 is perfectly even."""
        if not self.ops or self.total == 0:
            return None
        return max(self.ops) / (self.total / len(self.ops))


def node_shares(addresses: Sequence[str], before: Sequence[Mapping[str, int]],
                after: Sequence[Mapping[str, int]]) -> NodeShares:
    """Each node's load calls between two ``INFO commandstats`` snapshots."""
    ops = [max(0, load_calls(a) - load_calls(b)) for b, a in zip(before, after, strict=True)]
    return NodeShares(list(addresses), ops)


def format_report(config: LoadConfig, result: LoadResult, shares: NodeShares, target: str,
                  cpu_us_per_op: float | None = None) -> str:
    """The skewed-load report as plain text."""
    lines = [
        f"skewed load: Zipf s={config.s} over {config.keys:,} keys, "
        f"{config.get_ratio:.0%} GET / {1 - config.get_ratio:.0%} SET, "
        f"{config.processes} processes x pipeline {config.pipeline}, {result.seconds:.1f} s",
        f"target {target}: {result.ops_per_s:,.0f} ops/s "
        f"({result.ops:,} ops, {result.errors:,} error replies)",
    ]
    if cpu_us_per_op is not None:
        lines.append(f"proxy CPU: {cpu_us_per_op:.2f} µs/op")
    lines.append(f"{'node':<22} {'ops':>12} {'share':>8}")
    for address, ops, share in zip(shares.addresses, shares.ops, shares.shares, strict=True):
        lines.append(f"{address:<22} {ops:>12,} {share:>8.1%}")
    mom = shares.max_over_mean
    lines.append(f"max/mean node load: {'-' if mom is None else f'{mom:.2f}'}"
                 f" (1.00 = even; {len(shares.ops)} nodes)")
    return "\n".join(lines)


def shares_dict(shares: NodeShares) -> dict:
    return {"addresses": shares.addresses, "ops": shares.ops, "shares": shares.shares,
            "max_over_mean": shares.max_over_mean}

