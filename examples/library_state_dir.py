"""Library mode following the live topology: keeps working while the admin CLI moves arcs.

    redis-server --port 7001 --save "" &   # and 7002, 7003, 7004
    ringleader serve --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
        --state-dir /tmp/ringleader-state &
    python examples/library_state_dir.py /tmp/ringleader-state
    # meanwhile, in another shell:
    ringleader admin --proxy 127.0.0.1:7000 add-node 127.0.0.1:7004 --wait

The client reads the topology from the proxy's state directory, registers as a participant
(``ringleader admin --proxy 127.0.0.1:7000 status`` lists it), follows each epoch, and serves
keys of moving arcs move-then-serve. Every value it reads back is checked against what it
wrote; the script stops after ``--seconds`` (or on Ctrl-C) and prints what it saw.
"""

from __future__ import annotations

import argparse
import time

from rebalancer.store import default_state_dir
from router import ShardedClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("state_dir", nargs="?", default=str(default_state_dir()))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keys", type=int, default=2000)
    args = parser.parse_args()

    with ShardedClient.from_state_dir(args.state_dir) as client:
        print(f"following {args.state_dir} as {client.participant_id}: epoch {client.epoch}, "
              f"nodes {client.nodes}")
        written = {f"demo:{i}": f"v0:{i}" for i in range(args.keys)}
        client.mset(written)
        epoch, rounds, wrong = client.epoch, 0, 0
        deadline = time.monotonic() + args.seconds
        try:
            while time.monotonic() < deadline:
                rounds += 1
                with client.pipeline() as pipe:  # one round trip per node
                    for i in range(0, args.keys, 7):
                        written[f"demo:{i}"] = f"v{rounds}:{i}"
                        pipe.set(f"demo:{i}", written[f"demo:{i}"])
                    pipe.execute()
                names = list(written)
                values = client.mget(names)
                wrong += sum(v.decode() != written[k] for k, v in zip(names, values, strict=True))
                client.incr("demo:rounds")
                if client.epoch != epoch:
                    epoch = client.epoch
                    print(f"epoch {epoch}: {len(client.nodes)} nodes; keys moved by this "
                          f"client so far: {client.moved_on_access}")
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass
        print(f"{rounds} rounds, {wrong} wrong reads, {client.moved_on_access} keys moved on "
              f"access; demo:0 is on {client.node_for('demo:0')}")
        client.delete(*written, "demo:rounds")


if __name__ == "__main__":
    main()
