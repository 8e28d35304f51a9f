"""What a node connection's reply reader costs per reply: ``python -m bench.reader``.

End-to-end runs on a shared machine move by more than a per-reply cut saves, so this times
the real ``NodeConnection.on_readable`` alone: a socketpair stands in for the node, 16
replies of one kind are sent and read per round (a pipeline of 16), and the cost of sending
and receiving the bytes (measured the same way without the reader) is taken off. The best of
several repeats is reported, as ``timeit`` advises. Use ``--base REF`` to time another
revision's ``backends/node.py`` in the same process, for a before/after (only that file is
swapped: both use this checkout's ``router.resp``, so MGET's array scan is the same in both).
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from backends import node as current
from backends.poller import Poller
from backends.slots import Slot
from router.nodes import NodeSpec

from .systems import REPO

REPLIES = {
    "+OK": b"+OK\r\n",
    "bulk 64 B": b"$64\r\n" + b"v" * 64 + b"\r\n",
    "integer": b":12345\r\n",
    "null": b"$-1\r\n",
    "MGET 4 x 64 B": b"*4\r\n" + (b"$64\r\n" + b"v" * 64 + b"\r\n") * 4,
}
PIPELINE = 16


class _Client:
    """The session a reply is for: the reader only marks it dirty."""

    dirty = False
    proto = 2


def module_at(ref: str) -> ModuleType:
    """``backends/node.py`` as of git revision ``ref``, loaded under another name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:backends/node.py"],
                            check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix="ringleader-reader-") as tmp:
        path = Path(tmp) / "node_base.py"
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location("backends.node_base", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while being made
        spec.loader.exec_module(module)  # compiled now: the file may go
    return module


def per_reply_ns(module: ModuleType, reply: bytes, number: int = 20_000) -> float:
    """Nanoseconds the reader of ``module`` spends framing and matching one ``reply``."""
    poller = Poller()
    poller._in_round = True  # collect dirty clients; nothing is flushed
    conn = module.NodeConnection(NodeSpec("127.0.0.1", 1), 2, module.NodeSettings(), poller)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn.sock, conn.state = ours, module.UP
    client = _Client()
    batch = reply * PIPELINE
    mget = reply.startswith(b"*")

    def entries() -> list:
        if not mget:
            return [Slot(client) for _ in range(PIPELINE)]
        from backends.slots import FanoutSlot, ItemsPart
        return [ItemsPart(FanoutSlot(client, 1, lambda parts, proto: b""), 0)
                for _ in range(PIPELINE)]

    def read() -> None:
        conn.fifo.extend(entries())
        theirs.send(batch)
        conn.on_readable()
        poller._clients.clear()

    def transport() -> None:
        entries()
        theirs.send(batch)
        ours.recv(65536)

    try:
        with_reader = min(timeit.repeat(read, number=number, repeat=5))
        without = min(timeit.repeat(transport, number=number, repeat=5))
    finally:
        ours.close()
        theirs.close()
    return (with_reader - without) / number / PIPELINE * 1e9


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="also time the reader of this git revision")
    args = parser.parse_args(argv)
    versions = [("this checkout", current)]
    if args.base:
        versions.insert(0, (args.base, module_at(args.base)))
    print(f"ns per reply, framing and matching, pipelines of {PIPELINE}")
    print(f"{'reply':<16}" + "".join(f"{name:>16}" for name, _ in versions))
    for label, reply in REPLIES.items():
        cells = "".join(f"{per_reply_ns(module, reply):>16.0f}" for _, module in versions)
        print(f"{label:<16}{cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
