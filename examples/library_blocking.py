"""Library mode, blocking: shard keys over the nodes from inside this process.

    ringleader up &                                  # three nodes on 127.0.0.1:7001-7003
    python examples/library_blocking.py              # or give the nodes:
    python examples/library_blocking.py 127.0.0.1:7001 127.0.0.1:7002

Keys land exactly where ``ringleader serve`` in front of the same nodes would put them, so
the proxy and this script see the same data.
"""

from __future__ import annotations

import sys

from router import ShardedClient

NODES = sys.argv[1:] or ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def main() -> None:
    with ShardedClient(NODES, decode_responses=True) as client:
        client.set("greeting", "hello", ex=60)
        print("greeting =", client.get("greeting"), "on", client.node_for("greeting"))

        client.mset({f"user:{i}": f"name-{i}" for i in range(6)})  # split over the nodes
        print("mget:", client.mget([f"user:{i}" for i in range(6)]))
        for i in range(6):
            print(f"  user:{i} lives on {client.node_for(f'user:{i}')}")

        # One round trip per node; results in call order.
        with client.pipeline() as pipe:
            pipe.incr("visits")
            pipe.hset("{user:1}:profile", mapping={"lang": "fr", "plan": "pro"})
            pipe.hgetall("{user:1}:profile")
            print("pipeline:", pipe.execute())

        # Keys that must be together share a hash tag.
        client.sadd("{team:7}:members", "ada", "grace")
        client.sadd("{team:7}:admins", "grace")
        print("admins who are members:", client.sinter(["{team:7}:members", "{team:7}:admins"]))

        client.delete("greeting", "visits", "{user:1}:profile", "{team:7}:members",
                      "{team:7}:admins", *[f"user:{i}" for i in range(6)])

    # Python objects as values: the msgpack codec (SET/GET family only, see docs/library.md).
    with ShardedClient(NODES, value_codec="msgpack") as objects:
        objects.set("order:1", {"items": ["tea", "cake"], "total": 7.5})
        print("order:1 =", objects.get("order:1"))
        objects.delete("order:1")


if __name__ == "__main__":
    main()
