"""Library mode in a trio program: the same client, awaited.

    ringleader up &                                  # three nodes on 127.0.0.1:7001-7003
    python examples/library_trio.py                  # or give the nodes as arguments
"""

from __future__ import annotations

import sys

import trio

from router import TrioShardedClient

NODES = sys.argv[1:] or ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


async def worker(client: TrioShardedClient, number: int) -> None:
    for i in range(100):
        await client.set(f"job:{number}:{i}", i)
        await client.incr("jobs:done")


async def main() -> None:
    async with TrioShardedClient(NODES, decode_responses=True) as client:
        async with trio.open_nursery() as nursery:  # one client, shared by many tasks
            for number in range(10):
                nursery.start_soon(worker, client, number)
        print("jobs done:", await client.get("jobs:done"))

        async with client.pipeline() as pipe:  # queue without await, then one execute
            for number in range(10):
                pipe.get(f"job:{number}:99")
            print("last of each worker:", await pipe.execute())

        removed = await client.delete("jobs:done", *[f"job:{n}:{i}" for n in range(10)
                                                       for i in range(100)])
        print("removed", removed, "keys from", len(client.nodes), "nodes")


if __name__ == "__main__":
    trio.run(main)
