"""MULTI/EXEC on a sharded keyspace, without sockets.

A transaction is pinned to one node: the node of its first key (or of the keys WATCHed
before it). Each queued command is routed as usual, by a capturing sink; a command that
would go to another node, be split over nodes, or be answered by the proxy itself is
refused at queue time and the transaction is marked aborted, as Redis does for errors while
queueing (EXEC then replies EXECABORT). At EXEC the session sends ``MULTI``, the queued
commands and ``EXEC`` to the pinned node in one batch, so nothing interleaves.
"""

from __future__ import annotations

from . import resp

EXECABORT = resp.error("EXECABORT Transaction discarded because of previous errors.")
NESTED = resp.error("ERR MULTI calls can not be nested")
WATCH_IN_MULTI = resp.error("ERR WATCH inside MULTI is not allowed")
EXEC_WITHOUT_MULTI = resp.error("ERR EXEC without MULTI")
DISCARD_WITHOUT_MULTI = resp.error("ERR DISCARD without MULTI")


class Capture:
    """A sink that records where a route would send a request instead of sending it."""

    __slots__ = ("proto", "node", "args", "refusal")

    def __init__(self, proto: int) -> None:
        self.proto = proto
        self.node: int | None = None
        self.args: list[bytes] | None = None
        self.refusal: bytes | None = None

    def forward(self, node: int, args: list[bytes]) -> None:
        self.node, self.args = node, args

    def fanout(self, calls: list[tuple[int, list[bytes]]], merge) -> None:
        self.refusal = resp.error(
            f"CROSSSLOT ringleader: '{calls[0][1][0].decode(errors='replace').upper()}' inside "
            "MULTI must have all its keys on one node (its keys are on several)")

    def reply(self, raw: bytes) -> None:
        if raw[:1] in (b"-", b"!"):
            self.refusal = raw
        else:
            self.refusal = resp.error("ERR ringleader: this command is answered by the proxy "
                                      "and cannot be queued in a transaction")

    def forward_dedicated(self, node: int, args: list[bytes]) -> None:
        self.forward(node, args)  # blocking commands do not block inside MULTI


class Transaction:
    """Commands queued between MULTI and EXEC, and the node they are pinned to."""

    __slots__ = ("node", "queued", "aborted", "labels")

    def __init__(self, node: int | None, labels: list[str]) -> None:
        self.node = node  # pinned by WATCH, or by the first queued command
        self.queued: list[list[bytes]] = []
        self.aborted = False
        self.labels = labels

    def queue(self, capture: Capture) -> bytes:
        """Add a routed command; the reply for the client (QUEUED or the refusal)."""
        if capture.refusal is not None:
            self.aborted = True
            return capture.refusal
        if capture.node is None or capture.args is None:
            self.aborted = True
            return resp.error("ERR ringleader: this command cannot be queued in a transaction")
        if self.node is None:
            self.node = capture.node
        elif capture.node != self.node:
            self.aborted = True
            return resp.error(
                f"CROSSSLOT ringleader: this transaction is pinned to node "
                f"{self.labels[self.node]} (its first key's node), but "
                f"'{capture.args[0].decode(errors='replace').upper()}' goes to node "
                f"{self.labels[capture.node]}; keep a transaction's keys under one hash tag")
        self.queued.append(capture.args)
        return resp.QUEUED

    def batch(self) -> list[list[bytes]]:
        """What is sent at EXEC: MULTI, the commands, EXEC."""
        return [[b"MULTI"], *self.queued, [b"EXEC"]]
