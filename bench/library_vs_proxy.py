"""One Python process doing GETs: through the library (``ShardedClient``, straight to the
nodes) versus through the proxy (redis-py against ``ringleader serve``).

    python -m bench.library_vs_proxy                  # 20,000 GETs per run, 3 runs each
    python -m bench.library_vs_proxy --requests 50000 --repeat 5 --depth 32

Starts 3 nodes and a proxy (``bench/systems.py``), writes the keys once, then alternates
library and proxy runs (so drift on a shared machine hits both alike) at pipeline depth 1
and at ``--depth``, and prints the median ops/s of each and their ratio. For scale, redis-py
straight to one node (no sharding at all) is measured too. The client is
single-threaded in both cases, so the figures are bounded by one Python process: they show
what the hop costs such a client, not what the proxy can serve.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from backends.local_nodes import HOST
from bench import systems
from router import ShardedClient

VALUE = b"v" * 64


def get_loop(client: redis.Redis | ShardedClient, keys: list[str], requests: int) -> float:
    """Seconds for ``requests`` GETs, one round trip each."""
    get = client.get
    n = len(keys)
    started = time.perf_counter()
    for i in range(requests):
        get(keys[i % n])
    return time.perf_counter() - started


def pipelined_loop(client: redis.Redis | ShardedClient, keys: list[str], requests: int,
                   depth: int) -> float:
    """Seconds for ``requests`` GETs sent ``depth`` at a time in pipelines."""
    n = len(keys)
    started = time.perf_counter()
    for start in range(0, requests, depth):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + depth, requests)):
            pipe.get(keys[i % n])
        pipe.execute()
    return time.perf_counter() - started


def measure(runs: dict[str, Callable[[], float]], repeat: int, requests: int) -> dict[str, float]:
    """Median ops/s per named run, the runs alternating in a rotating order."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(repeat):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            samples[name].append(requests / runs[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.library_vs_proxy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="GETs per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (median shown)")
    parser.add_argument("--depth", type=int, default=16, help="pipeline depth of the second row")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys read")
    args = parser.parse_args(argv)

    keys = [f"key:{i:06d}" for i in range(args.keys)]
    with (systems.nodes(3) as nodes, tempfile.TemporaryDirectory() as workdir,
          systems.ringleader(nodes, Path(workdir)) as proxy):
        library = ShardedClient([n.address for n in nodes], socket_timeout=10)
        through_proxy = redis.Redis(host=HOST, port=proxy.port, protocol=2, socket_timeout=10)
        one_node = redis.Redis(host=HOST, port=nodes[0].port, protocol=2, socket_timeout=10)
        pipe = library.pipeline()
        for key in keys:
            pipe.set(key, VALUE)
        pipe.execute()
        one_node.mset(dict.fromkeys(keys, VALUE))  # every key, so it reads the same values
        assert through_proxy.get(keys[0]) == VALUE, "the proxy does not see the library's keys"
        get_loop(library, keys, 500)  # warm up connections and caches
        get_loop(through_proxy, keys, 500)
        get_loop(one_node, keys, 500)

        rows = []
        single = measure({"library": lambda: get_loop(library, keys, args.requests),
                          "proxy": lambda: get_loop(through_proxy, keys, args.requests),
                          "direct": lambda: get_loop(one_node, keys, args.requests)},
                         args.repeat, args.requests)
        rows.append(("GET P1", single))
        depth = args.depth
        piped = measure(
            {"library": lambda: pipelined_loop(library, keys, args.requests, depth),
             "proxy": lambda: pipelined_loop(through_proxy, keys, args.requests, depth),
             "direct": lambda: pipelined_loop(one_node, keys, args.requests, depth)},
            args.repeat, args.requests)
        rows.append((f"GET P{depth}", piped))
        proxy.check_alive()
        library.close()
        through_proxy.close()
        one_node.close()

    print(f"one Python process, {args.requests} GETs per run, median of {args.repeat} runs, "
          f"3 local redis-server nodes")
    print(f"{'workload':<10} {'library ops/s':>14} {'proxy ops/s':>12} {'library/proxy':>14} "
          f"{'direct ops/s':>13}")
    for name, result in rows:
        print(f"{name:<10} {result['library']:>14,.0f} {result['proxy']:>12,.0f} "
              f"{result['library'] / result['proxy']:>14.2f} {result['direct']:>13,.0f}")
    print("library: ShardedClient straight to the nodes; proxy: redis-py through ringleader "
          "serve; direct: redis-py to one node, no sharding")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
