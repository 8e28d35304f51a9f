"""Issue 6's figures: a node added (3 -> 4) and removed (4 -> 3) under load, with the
consistency checker watching.

    python -m bench.rebalance [--keys 50000] [--clients 6]

Reports: keys moved and the share of all keys (target: within 10% of 1/(n+1) for add-node),
the move's duration and keys/s, throughput during the move as a fraction of before
(target >= 0.5), client-visible errors, and violations (target: zero).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import redis

from backends.local_nodes import start_redis

from .consistency import Workload, prefill, throughput_ratio, verify
from .proxyproc import proxy_from_toml

RESULTS = Path(__file__).parent / "results"


def admin(address: str, *args: str) -> dict:
    host, port = address.rsplit(":", 1)
    with redis.Redis(host=host, port=int(port), protocol=2) as client:
        return json.loads(client.execute_command("RINGLEADER", *args))


def wait_done(address: str, timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        migrations = admin(address, "MIGRATIONS")["migrations"]
        if migrations and all(m["state"] in ("done", "failed", "cancelled") for m in migrations):
            return migrations
        time.sleep(0.1)
    raise TimeoutError("migrations did not finish")


def measure(address: str, keyspace, clients: int, operation: list[str], settle: float) -> dict:
    with Workload(address, clients=clients, keyspace=keyspace, prefilled=True) as work:
        time.sleep(settle)  # a baseline window before the move
        start = work.elapsed()
        admin(address, *operation)
        wait_done(address)
        end = work.elapsed()
        time.sleep(1.0)
        record = work.stop()
    report = verify(address, record)
    # the baseline leaves out the first second of load (connections opening, warm-up)
    return {"report": report, "before": (min(1.0, start / 2), start),
            "during": (start, end), "duration": end - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--keys-per-sec", type=float, default=None,
                        help="the mover's throttle ([migration] keys_per_sec; 0: none; "
                             "default the proxy's)")
    parser.add_argument("--batch", type=int, default=None,
                        help="keys per MIGRATE ([migration] batch; default the proxy's)")
    options = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ringbench-rebalance-"))
    nodes = [start_redis() for _ in range(4)]
    rows = []
    try:
        toml = ("nodes = [" + ", ".join(f'"{n.address}"' for n in nodes[:3]) + "]\n"
                f'state_dir = "{workdir / "state"}"\n'
                "[migration]\n"
                + (f"keys_per_sec = {options.keys_per_sec}\n"
                   if options.keys_per_sec is not None else "")
                + (f"batch = {options.batch}\n" if options.batch else ""))
        with proxy_from_toml(toml, workdir) as address:
            prefill(address, options.keys, clients=options.clients)
            total_keys = sum(redis.Redis(port=n.port).dbsize() for n in nodes)
            for label, operation in [("add-node 3 -> 4", ["ADD-NODE", nodes[3].address]),
                                     ("remove-node 4 -> 3", ["REMOVE-NODE", nodes[3].address])]:
                # each run starts from freshly written keys: the checker knows their values
                keyspace = prefill(address, options.keys, clients=options.clients)
                before_sizes = [redis.Redis(port=n.port).dbsize() for n in nodes]
                result = measure(address, keyspace, options.clients, operation, options.settle)
                after_sizes = [redis.Redis(port=n.port).dbsize() for n in nodes]
                moved = abs(after_sizes[3] - before_sizes[3])
                report = result["report"]
                if not report.ok:
                    print(report.summary())
                rows.append({
                    "row": label, "keys_moved": moved,
                    "share_moved": moved / max(total_keys, 1),
                    "seconds": result["duration"],
                    "keys_per_sec": moved / max(result["duration"], 1e-9),
                    "throughput_ratio": throughput_ratio(report, result["before"],
                                                         result["during"]),
                    "errors": sum(v for k, v in report.errors.items()
                                  if k != "unknown_outcomes"),
                    "violations": sum(report.violations.values()),
                })
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.rebalance "
             f"--keys {options.keys} --clients {options.clients}"
             + (f" --keys-per-sec {options.keys_per_sec:g}"
                if options.keys_per_sec is not None else "")
             + (f" --batch {options.batch}" if options.batch else "") + "` (2 cores: load, proxy and "
             "nodes share them):", "",
             "| operation | keys moved | share of keys | seconds | keys/s | throughput during / "
             "before | client errors | violations |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['throughput_ratio']:.2f}" if r["throughput_ratio"] is not None else "-"
        lines.append(f"| {r['row']} | {r['keys_moved']:,} | {r['share_moved']:.3f} | "
                     f"{r['seconds']:.1f} | {r['keys_per_sec']:,.0f} | {ratio} | "
                     f"{r['errors']} | {r['violations']} |")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rebalance-latest.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0 if all(r["violations"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
