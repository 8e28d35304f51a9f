"""Issue 8's table: what each write acknowledgement level costs, and what reading from
replicas gains, measured side by side on one shard (a primary and a replica).

    python -m bench.durability [--requests N] [--clients C]

SET latency (p50/p99, redis-benchmark) at write_ack = primary, replicas:1 (and fsync when the
nodes support WAITAOF); GET throughput with read_policy = primary vs prefer-replica.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from backends.local_nodes import (
    find_binary,
    redis_version,
    start_redis,
    start_replica,
    wait_for_replication,
)

from .proxyproc import proxy_from_toml
from .results import parse_benchmark_csv

RESULTS = Path(__file__).parent / "results"


def benchmark(address: str, test: str, requests: int, clients: int) -> dict:
    host, port = address.rsplit(":", 1)
    binary = find_binary("redis-benchmark", "apt-get install redis-tools")
    out = subprocess.run([binary, "-h", host, "-p", port, "-t", test, "-n", str(requests),
                          "-c", str(clients), "-d", "64", "-r", "100000", "--csv"],
                         capture_output=True, text=True, timeout=600)
    row = parse_benchmark_csv(out.stdout)[0]
    return {"rps": row.rps, "p50": row.p50_ms, "p99": row.p99_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=50)
    options = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ringbench-durability-"))
    primary = start_redis()
    replica = start_replica(primary)
    rows = []
    try:
        wait_for_replication(primary, replica)
        base = (f'ack_timeout_ms = 1000\nread_your_writes_ms = 0\n'
                f'[[nodes]]\naddress = "{primary.address}"\nreplicas = ["{replica.address}"]\n')
        levels = ["primary", "replicas:1"]
        fsync_ok = (redis_version("127.0.0.1", primary.port) or (0,)) >= (7, 2)
        if fsync_ok:
            levels.append("fsync")
        for level in levels:
            with proxy_from_toml(f'write_ack = "{level}"\n' + base, workdir) as address:
                result = benchmark(address, "set", options.requests, options.clients)
            rows.append({"row": f"SET, write_ack = {level}", **result})
        for policy in ["primary", "prefer-replica"]:
            with proxy_from_toml(f'read_policy = "{policy}"\n' + base, workdir) as address:
                result = benchmark(address, "get", options.requests, options.clients)
            rows.append({"row": f"GET, read_policy = {policy}", **result})
    finally:
        replica.stop()
        primary.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.durability` "
             f"({options.clients} clients, {options.requests} requests, 1 shard = primary + "
             "replica on one machine):", "",
             "| row | ops/s | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['row']} | {r['rps']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} |" for r in rows]
    if not fsync_ok:
        lines.append("")
        lines.append("write_ack = fsync: not measured: these nodes lack WAITAOF (Redis 7.2+), "
                     "and the proxy refuses it at startup.")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "durability-latest.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
