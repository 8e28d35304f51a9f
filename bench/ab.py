"""Two versions of ringleader side by side: ``python -m bench.ab [--base REF]``.

The side-by-side table compares ringleader with twemproxy; this compares ringleader with
itself, to tell whether a change to the data path pays. The base (a git revision, checked
out into a temporary worktree) and the candidate (this checkout, as it is on disk) run over
the same three nodes, alternated run by run, and each proxy's user and system CPU time per
request is read from /proc: on a shared machine the throughput of one run moves by 10% or
more, the CPU a proxy spends per request much less. ``--base HEAD`` with a clean checkout is
an A/A run, which shows how far apart two identical proxies come out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backends.local_nodes import (
    HOST,
    RedisProcess,
    find_binary,
    free_port,
    redis_ping,
    wait_until,
)

from .harness import benchmark_argv, preload
from .results import Workload, parse_benchmark_csv, select_workloads
from .systems import REPO, System, nodes, parse_proc_stat, stop_process, tail


@dataclass
class Side:
    """One version's measurements for one workload."""

    rps: list[float] = field(default_factory=list)
    user_us: list[float] = field(default_factory=list)  # per request
    sys_us: list[float] = field(default_factory=list)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process so far."""
    utime, stime, _ = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    ticks = os.sysconf("SC_CLK_TCK")
    return utime / ticks, stime / ticks


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """``ref`` checked out into a temporary directory, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="ringleader-ab-") as tmp:
        path = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), ref],
                       check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                           check=False)


@contextlib.contextmanager
def proxy_from(repo: Path, node_list: Sequence[RedisProcess], name: str,
               extra: Sequence[str]) -> Iterator[System]:
    """``python -m router serve`` run from ``repo`` (its own code, not the installed one)."""
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"ringleader-ab-{name}-{port}.log"
    argv = [sys.executable, "-m", "router", "serve", "--listen", f"{HOST}:{port}",
            "--nodes", ",".join(n.address for n in node_list), *extra]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(argv, cwd=repo, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        try:
            wait_until(lambda: redis_ping(HOST, port), 30, f"ringleader ({name})", proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; log:\n{tail(log)}") from None
        yield System(name, port, proc=proc, cpu_of="ringleader", log=log)
    finally:
        stop_process(proc)


def measure(system: System, workload: Workload, requests: int, side: Side) -> None:
    assert system.pid is not None
    binary = find_binary("redis-benchmark", "apt-get install redis-tools")
    argv = benchmark_argv(binary, system, workload, requests, 50, 100_000)
    user0, sys0 = cpu_times(system.pid)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(120.0, requests / 1000))
    user1, sys1 = cpu_times(system.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {proc.stderr.strip()[-300:]}")
    side.rps.append(parse_benchmark_csv(proc.stdout)[-1].rps)
    side.user_us.append((user1 - user0) / requests * 1e6)
    side.sys_us.append((sys1 - sys0) / requests * 1e6)


def report_line(workload: Workload, base: Side, cand: Side) -> str:
    ratio = median(cand.rps) / median(base.rps)
    per_run = ", ".join(f"{c / b:.2f}" for b, c in zip(base.rps, cand.rps, strict=True))
    return (f"{workload.name:<10} ops/s base {median(base.rps):>9,.0f} candidate "
            f"{median(cand.rps):>9,.0f} ({ratio:.3f}; per run {per_run}) | µs/request user "
            f"{median(base.user_us):.2f} -> {median(cand.user_us):.2f}, system "
            f"{median(base.sys_us):.2f} -> {median(cand.sys_us):.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against (HEAD)")
    parser.add_argument("--workloads", default="set16,get16",
                        help="rows of the side-by-side table (set1,get16,mget10...)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per version and workload")
    parser.add_argument("--requests", type=int, default=200_000, help="-n of each run")
    parser.add_argument("--ringleader-args", default="", help="extra `serve` arguments for both")
    args = parser.parse_args(argv)
    workloads = select_workloads(args.workloads)
    extra = args.ringleader_args.split()
    print(f"base {args.base} vs this checkout, {args.rounds} alternated runs of "
          f"{args.requests:,} requests per workload; CPU per request is each proxy's own",
          flush=True)
    with contextlib.ExitStack() as stack:
        base_repo = stack.enter_context(worktree(args.base))
        node_list = stack.enter_context(nodes(3))
        preload(node_list, 100_000)
        base = stack.enter_context(proxy_from(base_repo, node_list, "base", extra))
        cand = stack.enter_context(proxy_from(REPO, node_list, "candidate", extra))
        for workload in workloads:
            sides = {"base": Side(), "candidate": Side()}
            for round_ in range(args.rounds):
                order = [base, cand] if round_ % 2 == 0 else [cand, base]
                for system in order:
                    measure(system, workload, args.requests, sides[system.name])
            print(report_line(workload, sides["base"], sides["candidate"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
