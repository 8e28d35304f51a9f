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
from statistics import median

from backends.local_nodes import find_binary

from .harness import preload, run_benchmark
from .results import Workload, select_workloads
from .systems import REPO, System, nodes, parse_proc_stat, ringleader


@dataclass
class Side:
    """One version's measurements for one workload."""

    rps: list[float] = field(default_factory=list)
    user_us: list[float] = field(default_factory=list)  # per request
    sys_us: list[float] = field(default_factory=list)


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


def measure(system: System, workload: Workload, requests: int, side: Side) -> None:
    """One redis-benchmark run (the side-by-side table's), with the proxy's user and system
    time read apart around it."""
    assert system.pid is not None
    binary = find_binary("redis-benchmark", "apt-get install redis-tools")
    user0, sys0 = cpu_times(system.pid)
    run = run_benchmark(binary, system, workload, requests, 50, 100_000, len(side.rps))
    user1, sys1 = cpu_times(system.pid)
    if run.error is not None:
        raise RuntimeError(run.error)
    side.rps.append(run.rps)
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
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ringleader-ab-")))
        node_list = stack.enter_context(nodes(3))
        preload(node_list, 100_000)
        base = stack.enter_context(ringleader(node_list, workdir, extra=extra, repo=base_repo))
        cand = stack.enter_context(ringleader(node_list, workdir, extra=extra))
        for workload in workloads:
            sides = Side(), Side()
            for round_ in range(args.rounds):
                order = [(base, sides[0]), (cand, sides[1])]
                for system, side in order if round_ % 2 == 0 else reversed(order):
                    measure(system, workload, args.requests, side)
            print(report_line(workload, *sides), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
