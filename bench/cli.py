"""``python -m bench``: the side-by-side table (default), ``--profile`` and ``--skewed``.

Progress goes to stderr; stdout carries the tables, so ``python -m bench > out.txt`` keeps
just the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path

from bench import systems as sysmod
from bench.harness import ALL_SYSTEMS, Options, SuiteResult, log, run_suite
from bench.plot import plot_available, plot_table
from bench.results import (
    RINGLEADER,
    Run,
    build_table,
    render_markdown,
    render_text,
    select_workloads,
    summarize,
    table_cells,
)

RESULTS = sysmod.REPO / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark ringleader side by side with direct Redis and twemproxy.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--profile", action="store_true",
                      help="profile ringleader under SET/GET depth-16 load and print top frames")
    mode.add_argument("--skewed", action="store_true",
                      help="Zipf-distributed load from Python processes; reports node shares")
    mode.add_argument("--report", metavar="JSON",
                      help="re-render the table (and plot) from a saved results file")
    p.add_argument("--quick", action="store_true",
                   help="short runs for development: 1 repeat, 1 s runs, nothing saved "
                        "unless --save")
    p.add_argument("--save", action="store_true", help="save results even with --quick")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--results-dir", type=Path, default=RESULTS)

    g = p.add_argument_group("side-by-side table")
    g.add_argument("--repeat", type=int, default=None, help="repetitions per cell (default 3)")
    g.add_argument("--seconds", type=float, default=None,
                   help="target length of one run in seconds (default 3); -n is calibrated")
    g.add_argument("--requests", type=int, default=None, help="fixed -n, no calibration")
    g.add_argument("--systems", default=",".join(ALL_SYSTEMS),
                   help="comma-separated subset of direct,twemproxy,ringleader")
    g.add_argument("--no-ringleader", action="store_true",
                   help="leave ringleader out (direct and twemproxy only)")
    g.add_argument("--workloads", default=None,
                   help="subset of set1,get1,set16,get16,mget10,mset10 (default all)")
    g.add_argument("--clients", type=int, default=50)
    g.add_argument("--keyspace", type=int, default=100_000)

    r = p.add_argument_group("ringleader")
    r.add_argument("--workers", type=int, default=None,
                   help="passed to `ringleader serve --workers N` (omitted when not given)")
    r.add_argument("--ringleader-args", default="",
                   help="extra arguments for `router serve`, one shell-quoted string")

    pr = p.add_argument_group("--profile")
    pr.add_argument("--profile-seconds", type=float, default=None, help="default 10 (quick: 3)")
    pr.add_argument("--profile-workload", default=None,
                    help="profile under one table row (get1, mget10...) instead of SET/GET P16")
    pr.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto")
    pr.add_argument("--top", type=int, default=25)

    s = p.add_argument_group("--skewed")
    s.add_argument("--target", choices=ALL_SYSTEMS, default=RINGLEADER)
    s.add_argument("--target-address", default=None,
                   help="HOST:PORT of an already running target (nothing is started)")
    s.add_argument("--nodes", default=None,
                   help="with --target-address: comma-separated node addresses to read stats from")
    s.add_argument("--nodes-count", type=int, default=3, help="nodes to start (default 3)")
    s.add_argument("--get-ratio", type=float, default=0.9)
    s.add_argument("--processes", type=int, default=2)
    s.add_argument("--pipeline", type=int, default=16)
    s.add_argument("--duration", type=float, default=None, help="default 10 s (quick: 3)")
    s.add_argument("--zipf-s", type=float, default=0.99)
    s.add_argument("--keys", type=int, default=1_000_000)
    s.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


def machine() -> dict:
    """What a reader needs to judge the figures: cores, CPU model, load when the run began."""
    info = {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg"] = os.getloadavg()
    return info


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "python -m bench" + (" " + shlex.join(args) if args else "")


def stamp_now() -> tuple[str, str]:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ"), now.isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def report(data: dict, plot_to: list[Path] | None) -> str:
    """The text table, the Markdown block and (optionally) the PNG, from results JSON data."""
    meta = data["meta"]
    runs = [Run.from_dict(r) for r in data["runs"]]
    systems = meta["systems"]
    workloads = meta["workloads"]
    rows = build_table(summarize(runs), workloads, systems)
    table = table_cells(rows, systems)
    workers = meta.get("workers")
    rl_note = f"ringleader with --workers {workers}" if workers else "ringleader (default workers)"
    described = {"direct": "direct = one redis-server",
                 "twemproxy": f"twemproxy = nutcracker ketama fnv1a_64 over {meta['node_count']} nodes",
                 "ringleader": f"{rl_note} over the same nodes"}
    legend = (f"ops/s and latencies are medians of {meta['repeat']} runs per cell, systems "
              f"alternated run by run; {meta['clients']} clients, {meta['keyspace']:,} random "
              f"keys, 64-byte values; " + "; ".join(described[s] for s in systems)
              + ". CPU µs/op = proxy user+sys CPU over the run / requests (an MGET/MSET of "
              "10 keys is one request).")
    date = meta["date"][:10]
    title = f"{date}, {meta['machine']['nproc']} cores: {meta['command']}"
    lines = [render_text(table), "", legend]
    for key, why in data.get("errors", {}).items():
        lines.append(f"skipped {key.replace('|', ' on ')}: {why}")
    lines += ["", "Markdown (for the README):", "",
              f"Measured {date} on {meta['machine']['nproc']} cores "
              f"({meta['machine'].get('cpu', 'unknown CPU')}) with `{meta['command']}`:", "",
              render_markdown(table), "", legend]
    if plot_to:
        if not plot_available():
            log("matplotlib not installed: no plot (pip install matplotlib)")
        else:
            for path in plot_to:
                plot_table(rows, systems, path, title)
    return "\n".join(lines)


def main_table(args: argparse.Namespace, argv: list[str] | None) -> int:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(ALL_SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}")
    if args.no_ringleader and RINGLEADER in systems:
        systems.remove(RINGLEADER)
    elif RINGLEADER in systems and not sysmod.ringleader_available():
        explicit = "--systems" in (sys.argv if argv is None else argv)
        if explicit:
            raise SystemExit("ringleader requested but `python -m router` does not exist yet")
        log("warning: `python -m router serve` is not in this checkout yet; "
            "running without ringleader")
        systems.remove(RINGLEADER)
    workloads = select_workloads(args.workloads)
    options = Options(
        systems=systems, workloads=workloads,
        repeat=args.repeat or (1 if args.quick else 3),
        seconds=args.seconds or (1.0 if args.quick else 3.0),
        requests=args.requests, clients=args.clients, keyspace=args.keyspace,
        workers=args.workers, ringleader_args=shlex.split(args.ringleader_args),
    )
    stamp, date = stamp_now()
    command = command_line(argv)
    meta = {
        "date": date, "command": command, "machine": machine(), "systems": systems,
        "workloads": [w.name for w in workloads], "repeat": options.repeat,
        "seconds": options.seconds, "clients": options.clients, "keyspace": options.keyspace,
        "node_count": options.node_count, "workers": options.workers,
        "ringleader_args": list(options.ringleader_args),
    }
    result: SuiteResult = run_suite(options)
    meta["versions"] = result.versions
    data = {"meta": meta, "runs": [r.to_dict() for r in result.runs],
            "requests": result.requests, "errors": result.errors}
    data["summary"] = [{"workload": w, "system": s, **vars(c)}
                       for (w, s), c in summarize(result.runs).items()]
    save = args.save or not args.quick
    plots: list[Path] = []
    if save:
        write_json(args.results_dir / f"bench-{stamp}.json", data)
        write_json(args.results_dir / "latest.json", data)
        if not args.no_plot:
            plots = [args.results_dir / f"bench-{stamp}.png", args.results_dir / "latest.png"]
    print(report(data, plots))
    if save:
        print(f"\nresults: {args.results_dir / f'bench-{stamp}.json'} (also latest.json)"
              + (f", plot: {plots[0]} (also latest.png)" if plots and plot_available() else ""))
    return 0


def main_report(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.report).read_text())
    plots = None if args.no_plot else [Path(args.report).with_suffix(".png")]
    print(report(data, plots))
    return 0


def main_profile(args: argparse.Namespace) -> int:
    from bench.profiling import ProfileOptions, run_profile

    if not sysmod.ringleader_available():
        raise SystemExit("`python -m router serve` does not exist yet: nothing to profile")
    stamp, _ = stamp_now()
    options = ProfileOptions(
        seconds=args.profile_seconds or (3.0 if args.quick else 10.0),
        profiler=args.profiler, workers=args.workers,
        ringleader_args=tuple(shlex.split(args.ringleader_args)), top=args.top,
        workload=args.profile_workload,
        output_dir=args.results_dir if (args.save or not args.quick) else Path(tempfile.gettempdir()),
    )
    print(run_profile(options, stamp))
    return 0


def main_skewed(args: argparse.Namespace, argv: list[str] | None) -> int:
    from bench.skewed import (
        LoadConfig,
        commandstats,
        format_report,
        node_shares,
        run_load,
        shares_dict,
    )
    from bench.zipf import ZipfSampler

    duration = args.duration or (3.0 if args.quick else 10.0)
    log(f"building the Zipf table (s={args.zipf_s}, {args.keys:,} keys)")
    sampler = ZipfSampler(args.keys, args.zipf_s, args.seed)
    stamp, date = stamp_now()
    with contextlib.ExitStack() as stack:
        system: sysmod.System | None = None
        if args.target_address:
            host, _, port = args.target_address.rpartition(":")
            if host != "127.0.0.1" and host != "localhost":
                log(f"note: target {host} is not loopback")
            target_label = args.target_address
            addresses = [a.strip() for a in (args.nodes or "").split(",") if a.strip()]
            if not addresses:
                log("no --nodes given: node shares cannot be measured")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ringskew-")))
            node_list = stack.enter_context(sysmod.nodes(args.nodes_count))
            if args.target == "direct":
                node_list = node_list[:1]
                system = sysmod.direct_system(node_list[0])
            elif args.target == "twemproxy":
                system = stack.enter_context(sysmod.twemproxy(node_list, workdir))
            else:
                if not sysmod.ringleader_available():
                    raise SystemExit("`python -m router serve` does not exist yet; "
                                     "use --target twemproxy or direct")
                system = stack.enter_context(sysmod.ringleader(
                    node_list, workdir, args.workers, shlex.split(args.ringleader_args)))
            host, port = system.host, str(system.port)
            target_label = f"{args.target} ({system.address}, {len(node_list)} nodes)"
            addresses = [n.address for n in node_list]
        config = LoadConfig(host=host, port=int(port), keys=args.keys, s=args.zipf_s,
                            get_ratio=args.get_ratio, processes=args.processes,
                            pipeline=args.pipeline, duration=duration, seed=args.seed)
        before = [commandstats(a) for a in addresses]
        cpu_before = sysmod.cpu_seconds(system.pid) if system and system.pid else None
        log(f"loading {target_label} for {duration:.0f} s with {args.processes} processes")
        result = run_load(config, sampler)
        cpu = (sysmod.cpu_seconds(system.pid) - cpu_before  # type: ignore[arg-type]
               if cpu_before is not None else None)
        after = [commandstats(a) for a in addresses]
        if system is not None:
            system.check_alive()
    shares = node_shares(addresses, before, after)
    cpu_per_op = cpu / result.ops * 1e6 if cpu is not None and result.ops else None
    if args.target == "direct" and not args.target_address:
        cpu_per_op = None  # that is the node's CPU, not a proxy's
    print(format_report(config, result, shares, target_label, cpu_per_op))
    if args.save or not args.quick:
        data = {"meta": {"date": date, "command": command_line(argv), "machine": machine(),
                         "target": target_label, "config": vars(config)},
                "ops": result.ops, "gets": result.gets, "sets": result.sets,
                "errors": result.errors, "seconds": result.seconds,
                "ops_per_s": result.ops_per_s, "proxy_cpu_us_per_op": cpu_per_op,
                "per_process": result.per_process, "nodes": shares_dict(shares)}
        write_json(args.results_dir / f"skewed-{stamp}.json", data)
        write_json(args.results_dir / "skewed-latest.json", data)
        print(f"\nresults: {args.results_dir / f'skewed-{stamp}.json'}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so every context manager stops its process.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if args.report:
            return main_report(args)
        if args.profile:
            return main_profile(args)
        if args.skewed:
            return main_skewed(args, argv)
        return main_table(args, argv)
    except KeyboardInterrupt:
        log("interrupted; every started process has been stopped")
        return 130
    except (RuntimeError, TimeoutError) as exc:  # a system failed to start or died
        log(f"error: {exc}")
        return 1
