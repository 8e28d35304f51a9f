"""The side-by-side run: direct Redis, twemproxy and ringleader driven by redis-benchmark.

Systems are alternated run by run (each repetition visits every workload on every system,
in an order rotated per repetition), so that drift on a shared machine (other jobs, thermal
limits) hits every system alike; the table reports medians over repetitions.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from backends.local_nodes import HOST, RedisProcess, find_binary
from bench import systems as sysmod
from bench.results import (
    DIRECT,
    RINGLEADER,
    TWEMPROXY,
    VALUE_SIZE,
    BenchmarkOutputError,
    Run,
    Workload,
    parse_benchmark_csv,
)

ALL_SYSTEMS = (DIRECT, TWEMPROXY, RINGLEADER)


@dataclass
class Options:
    """What one harness run does; the CLI fills it in."""

    systems: Sequence[str] = ALL_SYSTEMS
    workloads: Sequence[Workload] = ()
    repeat: int = 3
    seconds: float = 3.0  # target duration of one run; -n is sized from a calibration run
    requests: int | None = None  # fixed -n instead of calibration
    clients: int = 50
    keyspace: int = 100_000
    node_count: int = 3
    workers: int | None = None
    ringleader_args: Sequence[str] = ()
    pause: float = 0.2  # between runs, so one run's teardown does not overlap the next


@dataclass
class SuiteResult:
    runs: list[Run] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)  # "workload|system" -> -n used
    errors: dict[str, str] = field(default_factory=dict)  # "workload|system" -> why skipped
    versions: dict[str, str] = field(default_factory=dict)


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)


def benchmark_argv(binary: str, system: sysmod.System, workload: Workload, requests: int,
                   clients: int, keyspace: int) -> list[str]:
    """The redis-benchmark command line (common options first, then the workload's)."""
    return [binary, "-h", system.host, "-p", str(system.port), "-c", str(clients),
            "-r", str(keyspace), "-n", str(requests), "--csv", *workload.args]


def _cpu(system: sysmod.System) -> float | None:
    if system.pid is None:
        return None
    try:
        return sysmod.cpu_seconds(system.pid)
    except Exception:  # the process went away: the run reports no CPU figure
        return None


def run_benchmark(binary: str, system: sysmod.System, workload: Workload, requests: int,
                  clients: int, keyspace: int, rep: int) -> Run:
    """One redis-benchmark invocation, with the measured process's CPU across it."""
    argv = benchmark_argv(binary, system, workload, requests, clients, keyspace)
    cpu_before = _cpu(system)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(120.0, requests / 1000))
    wall = time.perf_counter() - start
    cpu_after = _cpu(system)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    error = None
    if proc.returncode != 0:
        error = f"redis-benchmark exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    elif "Error from server" in proc.stderr or "Error from server" in proc.stdout:
        error = f"error replies: {proc.stderr.strip()[-300:]}"
    row = None
    if error is None:
        try:
            row = parse_benchmark_csv(proc.stdout)[-1]
        except BenchmarkOutputError as exc:
            error = str(exc)
    if row is None:
        return Run(system.name, workload.name, rep, requests, 0.0, wall, cpu_s=cpu,
                   cpu_of=system.cpu_of, error=error)
    return Run(system.name, workload.name, rep, requests, row.rps, wall, row.avg_ms, row.p50_ms,
               row.p95_ms, row.p99_ms, row.max_ms, cpu, system.cpu_of)


def client(host: str, port: int) -> redis.Redis:
    """A redis-py client that sends nothing at connect time.

    redis-py announces itself with CLIENT SETINFO by default; twemproxy does not know that
    command and closes the connection.
    """
    try:  # redis-py >= 7
        return redis.Redis(host=host, port=port, protocol=2, socket_timeout=10, driver_info=None)
    except TypeError:
        return redis.Redis(host=host, port=port, protocol=2, socket_timeout=10,
                           lib_name=None, lib_version=None)


def preload(node_list: Sequence[RedisProcess], keyspace: int, batch: int = 1000) -> None:
    """Write every benchmark key to every node, so a GET hits whichever node a ring picks.

    The two proxies need not place a key on the same node, and direct Redis uses one node:
    writing the whole key range everywhere makes every GET and MGET find its value on every
    system, instead of measuring misses on some and hits on others.
    """
    value = b"v" * VALUE_SIZE
    for node in node_list:
        conn = client(HOST, node.port)
        try:
            pipe = conn.pipeline(transaction=False)
            for start in range(0, keyspace, batch):
                mapping = {b"key:%012d" % i: value for i in range(start, min(keyspace, start + batch))}
                pipe.mset(mapping)
            pipe.execute()
        finally:
            conn.close()


def smoke_check(system: sysmod.System, workload: Workload) -> str | None:
    """None when ``system`` serves ``workload``'s command correctly, else why not.

    A proxy that answers a command with an error reply is fast at it; without this check
    redis-benchmark would report those error replies as throughput.
    """
    conn = client(system.host, system.port)
    keys = [f"key:{i:012d}" for i in range(10)]
    try:
        if workload.command == "set":
            ok = conn.set(keys[0], "v" * VALUE_SIZE)
            return None if ok else f"SET answered {ok!r}"
        if workload.command == "get":
            conn.set(keys[0], "v" * VALUE_SIZE)
            got = conn.get(keys[0])
            return None if got == b"v" * VALUE_SIZE else f"GET answered {got!r}"
        if workload.command == "mset":
            ok = conn.mset({k: "v" * VALUE_SIZE for k in keys})
            return None if ok else f"MSET answered {ok!r}"
        if workload.command == "mget":
            conn.mset({k: "v" * VALUE_SIZE for k in keys})
            got = conn.mget(keys)
            return None if got == [b"v" * VALUE_SIZE] * 10 else f"MGET answered {got!r}"
        return None
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def calibration_requests(workload: Workload) -> int:
    """A short first run's -n: about a tenth of a second on a fast system."""
    return 5000 * workload.pipeline if workload.keys_per_op == 1 else 3000


def sized_requests(rps: float, seconds: float, floor: int) -> int:
    """-n for a run of about ``seconds`` at ``rps``, rounded to a thousand, at least ``floor``."""
    wanted = int(round(rps * seconds, -3))
    return max(floor, min(wanted, 20_000_000))


def rotated(items: Sequence[str], by: int) -> list[str]:
    """``items`` rotated left by ``by``: repetition r starts with a different system."""
    if not items:
        return []
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def tool_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name, argv in (("redis-benchmark", ["redis-benchmark", "--version"]),
                       ("redis-server", ["redis-server", "--version"]),
                       ("nutcracker", [None, "-V"])):
        try:
            if argv[0] is None:
                argv[0] = find_binary("nutcracker", "")
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            versions[name] = (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, RuntimeError, subprocess.SubprocessError):
            versions[name] = "unavailable"
    return versions


def run_suite(options: Options, on_run: Callable[[Run], None] | None = None) -> SuiteResult:
    """Start everything, run every workload on every system ``repeat`` times, stop everything."""
    binary = find_binary("redis-benchmark", "apt-get install redis-tools")
    result = SuiteResult(versions=tool_versions())
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ringbench-")))
        log(f"starting {options.node_count} redis-server nodes")
        node_list = stack.enter_context(sysmod.nodes(options.node_count))
        log(f"preloading {options.keyspace:,} keys on every node")
        preload(node_list, options.keyspace)
        targets: dict[str, sysmod.System] = {}
        for name in options.systems:
            if name == DIRECT:
                targets[name] = sysmod.direct_system(node_list[0])
            elif name == TWEMPROXY:
                targets[name] = stack.enter_context(sysmod.twemproxy(node_list, workdir))
            elif name == RINGLEADER:
                targets[name] = stack.enter_context(sysmod.ringleader(
                    node_list, workdir, options.workers, options.ringleader_args))
            else:
                raise ValueError(f"unknown system {name!r}")
            log(f"  {name} on {targets[name].address}")

        usable: dict[tuple[str, str], bool] = {}
        for workload in options.workloads:
            for name, system in targets.items():
                problem = smoke_check(system, workload)
                usable[(workload.name, name)] = problem is None
                if problem:
                    result.errors[f"{workload.name}|{name}"] = problem
                    result.runs.append(Run(name, workload.name, -1, 0, 0.0, 0.0, error=problem))
                    log(f"  skipping {workload.name} on {name}: {problem}")
        preload(node_list, options.keyspace)  # the smoke check's writes differ from the preload

        requests: dict[tuple[str, str], int] = {}
        for workload in options.workloads:
            for name, system in targets.items():
                if not usable[(workload.name, name)]:
                    continue
                if options.requests is not None:
                    requests[(workload.name, name)] = options.requests
                    continue
                floor = calibration_requests(workload)
                probe = run_benchmark(binary, system, workload, floor, options.clients,
                                      options.keyspace, rep=-1)
                if probe.error:
                    raise RuntimeError(f"{workload.name} on {name} failed: {probe.error}")
                requests[(workload.name, name)] = sized_requests(probe.rps, options.seconds, floor)
        result.requests = {f"{w}|{s}": n for (w, s), n in requests.items()}

        order = list(targets)
        total = options.repeat * len(requests)
        done = 0
        for rep in range(options.repeat):
            for workload in options.workloads:
                for name in rotated(order, rep + options.workloads.index(workload)):
                    key = (workload.name, name)
                    if key not in requests:
                        continue
                    run = run_benchmark(binary, targets[name], workload, requests[key],
                                        options.clients, options.keyspace, rep)
                    result.runs.append(run)
                    done += 1
                    if on_run is not None:
                        on_run(run)
                    status = run.error or (
                        f"{run.rps:>11,.0f} ops/s  p50 {run.p50_ms} ms  p99 {run.p99_ms} ms"
                        + (f"  cpu {run.cpu_us_per_op:.2f} us/op" if run.cpu_us_per_op else ""))
                    log(f"[{done}/{total}] rep {rep + 1} {workload.name:<10} {name:<10} {status}")
                    targets[name].check_alive()
                    time.sleep(options.pause)
    return result
