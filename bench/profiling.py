"""Profile ringleader under load and print the frames that cost the most.

py-spy samples the running proxy from outside (no code change, low overhead, sees the C
extension boundary); when py-spy is missing or may not attach (ptrace refused), the proxy
is restarted under cProfile instead, which is slower and inflates Python call overhead,
so its figures are read as proportions, not absolute costs.
"""

from __future__ import annotations

import contextlib
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from backends.local_nodes import HOST, find_binary
from bench import systems as sysmod
from bench.results import default_workloads
from bench.skewed import commandstats, load_calls

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass
class FrameCost:
    frame: str
    self_cost: float  # samples (py-spy) or seconds (cProfile) spent in the frame itself
    total_cost: float  # including callees
    self_share: float  # of all samples / all profiled time
    total_share: float


def frame_label(frame: str) -> str:
    """``"send (trio/_socket.py:123)"`` -> ``"send (trio/_socket.py)"``: cost per function.

    Aggregating per function rather than per line keeps a function's cost in one row.
    """
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match['func']} ({match['file']})"


def parse_pyspy_raw(text: str, by_function: bool = True) -> tuple[dict[str, int], dict[str, int], int]:
    """(self samples, total samples, all samples) per frame from ``py-spy record --format raw``.

    Each line is ``root;...;leaf COUNT`` (collapsed stacks): the leaf gets the self time,
    every distinct frame on the stack gets the total (counted once per stack, so recursion
    does not inflate it). ``process ...`` and ``thread ...`` pseudo-frames are dropped.
    """
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    samples = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if by_function:
            frames = [frame_label(f) for f in frames]
        samples += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            total_counts[frame] = total_counts.get(frame, 0) + count
    return self_counts, total_counts, samples


def top_frames(self_costs: Mapping[str, float], total_costs: Mapping[str, float], overall: float,
               limit: int = 25) -> list[FrameCost]:
    """The ``limit`` frames with the highest self cost, with their shares of ``overall``."""
    ranked = sorted(self_costs.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [FrameCost(frame, cost, total_costs.get(frame, cost),
                      cost / overall if overall else 0.0,
                      total_costs.get(frame, cost) / overall if overall else 0.0)
            for frame, cost in ranked]


def pstats_costs(stats: Mapping) -> tuple[dict[str, float], dict[str, float], float]:
    """(self seconds, cumulative seconds, all self seconds) per function from pstats data."""
    self_costs: dict[str, float] = {}
    total_costs: dict[str, float] = {}
    for (filename, line, func), (_cc, _nc, tt, ct, _callers) in stats.items():
        if filename == "~":  # a builtin: its name says it all
            label = func
        else:
            label = f"{func} ({_short_path(filename)}:{line})"
        self_costs[label] = self_costs.get(label, 0.0) + tt
        total_costs[label] = max(total_costs.get(label, 0.0), ct)
    return self_costs, total_costs, sum(self_costs.values())


def _short_path(path: str) -> str:
    """Drop the site-packages / stdlib / repository prefix, as py-spy does."""
    short = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", path)
    if short != path:
        return short
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(sysmod.REPO))
    return path


def format_top(rows: list[FrameCost], unit: str) -> str:
    """The top frames as a table; ``unit`` is "samples" or "s"."""
    lines = [f"{'#':>3} {'self %':>7} {'total %':>8} {'self ' + unit:>12}  frame"]
    for i, row in enumerate(rows, 1):
        cost = f"{row.self_cost:.3f}" if unit == "s" else f"{row.self_cost:.0f}"
        lines.append(f"{i:>3} {row.self_share:>7.1%} {row.total_share:>8.1%} {cost:>12}  {row.frame}")
    return "\n".join(lines)


# ---------------------------------------------------------------- running it


@dataclass
class ProfileOptions:
    seconds: float = 10.0
    warmup: float = 1.0
    profiler: str = "auto"  # auto, py-spy, cprofile
    workers: int | None = None
    ringleader_args: tuple[str, ...] = ()
    top: int = 25
    clients: int = 50
    pipeline: int = 16
    keyspace: int = 100_000
    output_dir: Path = Path("bench/results")
    #: A row of the table (``mget10``, ``get1``...) to load instead of SET/GET at ``pipeline``.
    workload: str | None = None


def _load(binary: str, system: sysmod.System, options: ProfileOptions) -> subprocess.Popen:
    """redis-benchmark looping SET and GET at depth ``pipeline`` (or one table row) until
    stopped."""
    argv = [binary, "-h", HOST, "-p", str(system.port), "-c", str(options.clients),
            "-r", str(options.keyspace), "-d", "64", "-l", "-q"]
    if options.workload is None:
        argv += ["-P", str(options.pipeline), "-t", "set,get"]
    else:
        argv += list(workload_named(options.workload).args)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def workload_named(key: str):
    for workload in default_workloads():
        if workload.key == key:
            return workload
    raise ValueError(f"no workload {key!r}: one of "
                     f"{', '.join(w.key for w in default_workloads())}")


def _load_name(options: ProfileOptions) -> str:
    if options.workload is None:
        return f"SET/GET depth {options.pipeline}"
    return workload_named(options.workload).name


def _rate(node_addresses: list[str], before: list[dict], seconds: float) -> float:
    after = [commandstats(a) for a in node_addresses]
    ops = sum(load_calls(a) - load_calls(b) for a, b in zip(after, before, strict=True))
    return ops / seconds if seconds > 0 else 0.0


def run_profile(options: ProfileOptions, stamp: str) -> str:
    """Start nodes and ringleader, load it, profile it; returns the printed report."""
    from bench.harness import log, preload

    bench_binary = find_binary("redis-benchmark", "apt-get install redis-tools")
    pyspy = shutil.which("py-spy")
    use = options.profiler
    if use == "auto":
        use = "py-spy" if pyspy else "cprofile"
    if use == "py-spy" and not pyspy:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    options.output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ringprof-")))
        node_list = stack.enter_context(sysmod.nodes(3))
        addresses = [n.address for n in node_list]
        preload(node_list, options.keyspace)
        if use == "py-spy":
            report = _with_pyspy(pyspy, bench_binary, node_list, addresses, workdir, options, stamp)
            if report is not None:
                return report
            log("py-spy could not attach; falling back to cProfile")
        return _with_cprofile(bench_binary, node_list, addresses, workdir, options, stamp)
    raise AssertionError("unreachable")


def _with_pyspy(pyspy: str, bench_binary: str, node_list, addresses: list[str], workdir: Path,
                options: ProfileOptions, stamp: str) -> str | None:
    from bench.harness import log

    raw = options.output_dir / f"profile-{stamp}.pyspy.txt"
    with sysmod.ringleader(node_list, workdir, options.workers, options.ringleader_args) as system:
        load = _load(bench_binary, system, options)
        try:
            time.sleep(options.warmup)
            before = [commandstats(a) for a in addresses]
            cpu_before = sysmod.cpu_seconds(system.pid)  # type: ignore[arg-type]
            start = time.monotonic()
            argv = [pyspy, "record", "--pid", str(system.pid), "--format", "raw", "-o", str(raw),
                    "-d", str(max(1, round(options.seconds))), "--rate", "200"]
            if options.workers and options.workers > 1:
                argv.append("--subprocesses")
            log(f"py-spy sampling ringleader (pid {system.pid}) for {options.seconds:.0f} s")
            spy = subprocess.run(argv, capture_output=True, text=True,
                                 timeout=options.seconds + 60)
            elapsed = time.monotonic() - start
            rate = _rate(addresses, before, elapsed)
            cpu = sysmod.cpu_seconds(system.pid) - cpu_before  # type: ignore[arg-type]
        finally:
            sysmod.stop_process(load, signal.SIGINT)
        system.check_alive()
    if spy.returncode != 0 or not raw.exists():
        log(f"py-spy failed ({spy.returncode}): {spy.stderr.strip()[-500:]}")
        return None
    self_counts, total_counts, samples = parse_pyspy_raw(raw.read_text(errors="replace"))
    rows = top_frames(self_counts, total_counts, samples, options.top)
    header = (f"ringleader under redis-benchmark {_load_name(options)}, {options.clients} "
              f"clients: {rate:,.0f} ops/s at the nodes while sampled; proxy CPU "
              f"{cpu / elapsed:.0%} of a core; {samples:,} py-spy samples (non-idle) over "
              f"{elapsed:.1f} s\nraw stacks (flamegraph.pl input): {raw}\n"
              f"top {len(rows)} functions by self time:")
    return header + "\n" + format_top(rows, "samples")


def _with_cprofile(bench_binary: str, node_list, addresses: list[str], workdir: Path,
                   options: ProfileOptions, stamp: str) -> str:
    from bench.harness import log

    out = options.output_dir / f"profile-{stamp}.pstats"
    if options.workers and options.workers > 1:
        log("note: cProfile sees only the parent process of a multi-worker ringleader")
    wrapper = ("-m", "cProfile", "-o", str(out))
    with sysmod.ringleader(node_list, workdir, options.workers, options.ringleader_args,
                           wrapper=wrapper, stop_signal=signal.SIGINT) as system:
        load = _load(bench_binary, system, options)
        try:
            time.sleep(options.warmup)
            before = [commandstats(a) for a in addresses]
            log(f"cProfile: loading ringleader (pid {system.pid}) for {options.seconds:.0f} s")
            time.sleep(options.seconds)
            rate = _rate(addresses, before, options.seconds)
        finally:
            sysmod.stop_process(load, signal.SIGINT)
        proc = system.proc
    if proc is not None and proc.returncode not in (0, -signal.SIGINT, 130):
        log(f"ringleader exited {proc.returncode} under cProfile; log:\n{sysmod.tail(system.log)}")
    if not out.exists():
        raise RuntimeError(f"cProfile wrote no stats (exit {proc and proc.returncode}); "
                           f"log:\n{sysmod.tail(system.log)}")
    stats = pstats.Stats(str(out))
    self_costs, total_costs, overall = pstats_costs(stats.stats)  # type: ignore[attr-defined]
    rows = top_frames(self_costs, total_costs, overall, options.top)
    header = (f"ringleader under cProfile (slows Python code; read shares, not absolutes), "
              f"redis-benchmark {_load_name(options)}: {rate:,.0f} ops/s at the "
              f"nodes\nstats file: {out} (python -m pstats {out})\n"
              f"top {len(rows)} functions by self time:")
    return header + "\n" + format_top(rows, "s")


def main_profile(options: ProfileOptions, stamp: str) -> int:
    report = run_profile(options, stamp)
    print(report)
    sys.stdout.flush()
    return 0
