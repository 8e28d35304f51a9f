"""What hot-key mitigation costs when no key is hot: ringleader with and without ``--hotkeys``.

``python -m bench.hotkeys_overhead``: 3 redis-server nodes, two ringleader processes over them
(one plain, one with ``--hotkeys``), redis-benchmark with uniform random keys (no key takes
more than a tiny share, so nothing is flagged and every request pays only for detection).
The two proxies are run alternately, run by run, so machine drift hits both alike, and both
are restarted for every repeat, the order they start in alternating too: an A/A run
(``--control``, two plain proxies) showed the proxy started second 5-7% slower in three
cells of four through a whole run on this 2-core machine. The table shows medians and the ratio with / without (the
hot-keys issue's target: within 5%).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backends.local_nodes import find_binary
from bench import systems as sysmod
from bench.harness import preload, run_benchmark
from bench.results import Run, default_workloads

PLAIN, HOT = "ringleader", "ringleader --hotkeys"


@dataclass
class Row:
    workload: str
    plain_rps: float
    hot_rps: float
    plain_cpu_us: float | None
    hot_cpu_us: float | None
    runs: int

    @property
    def ratio(self) -> float:
        return self.hot_rps / self.plain_rps if self.plain_rps else 0.0


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[Run], workloads: list[str]) -> list[Row]:
    rows = []
    for name in workloads:
        plain = [r for r in runs if r.workload == name and r.system == PLAIN and not r.error]
        hot = [r for r in runs if r.workload == name and r.system == HOT and not r.error]
        if not plain or not hot:
            continue
        rows.append(Row(name, _median([r.rps for r in plain]) or 0.0,
                        _median([r.rps for r in hot]) or 0.0,
                        _median([c for r in plain if (c := r.cpu_us_per_op) is not None]),
                        _median([c for r in hot if (c := r.cpu_us_per_op) is not None]),
                        min(len(plain), len(hot))))
    return rows


def render(rows: list[Row]) -> str:
    def cpu(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = ["| workload | ops/s plain | ops/s --hotkeys | with / without | CPU µs/op plain / "
             "--hotkeys |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row.workload} | {row.plain_rps:,.0f} | {row.hot_rps:,.0f} | "
                     f"{row.ratio:.3f} | {cpu(row.plain_cpu_us)} / {cpu(row.hot_cpu_us)} |")
    return "\n".join(lines)


def start_pair(stack: contextlib.ExitStack, node_list, workdir: Path, control: bool,
               hot_first: bool) -> tuple[sysmod.System, sysmod.System]:
    """The plain proxy and the ``--hotkeys`` one (plain too under ``--control``), started in
    the order asked; both stop when ``stack`` closes."""
    extra = {PLAIN: [], HOT: [] if control else ["--hotkeys"]}
    started = {}
    for name in ((HOT, PLAIN) if hot_first else (PLAIN, HOT)):
        started[name] = stack.enter_context(sysmod.ringleader(node_list, workdir,
                                                              extra=extra[name]))
        started[name].name = name
    return started[PLAIN], started[HOT]


def run_repeat(binary: str, plain: sysmod.System, hot: sysmod.System, wanted: list[str],
               known: dict, args: argparse.Namespace, rep: int, runs: list[Run]) -> None:
    for key in wanted:
        workload = known[key]
        order = (plain, hot) if rep % 2 == 0 else (hot, plain)
        for system in order:
            run = run_benchmark(binary, system, workload, args.requests, args.clients,
                                args.keyspace, rep)
            run.workload = workload.name
            runs.append(run)
            print(f"  {workload.name:10} {system.name:22} {run.rps:>10,.0f} ops/s"
                  + (f"  ({run.error})" if run.error else ""), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotkeys_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="get1,set1,get16,set16",
                        help="rows of the main table to run (default get1,set1,get16,set16)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per proxy and workload")
    parser.add_argument("--requests", type=int, default=200_000, help="-n per run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--keyspace", type=int, default=100_000)
    parser.add_argument("--control", action="store_true",
                        help="both proxies plain (an A/A run): how far two identical proxies "
                             "differ on this machine, the noise floor of the comparison")
    args = parser.parse_args(argv)
    known = {w.key: w for w in default_workloads()}
    wanted = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}: choose from {', '.join(known)}")
    binary = find_binary("redis-benchmark", "apt-get install redis-tools")
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hotover-")))
        node_list = stack.enter_context(sysmod.nodes(3))
        preload(node_list, args.keyspace)
        for rep in range(args.repeat):
            with contextlib.ExitStack() as proxies:
                plain, hot = start_pair(proxies, node_list, workdir, args.control,
                                        hot_first=rep % 2 == 1)
                run_repeat(binary, plain, hot, wanted, known, args, rep, runs)
    rows = summarize(runs, [known[k].name for k in wanted])

    print(f"medians of {args.repeat} runs per cell, proxies alternated run by run; uniform "
          f"random keys over {args.keyspace:,}, {args.clients} clients, -n {args.requests:,}")
    print(render(rows))
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
