"""Consistency and durability as explicit knobs: where a read may go, and what a write's OK
means, per key pattern.

Read policies: ``primary`` (reads see every acknowledged write), ``prefer-replica`` (reads
spread over the shard's replicas, the primary when none is up; may be stale by the
replication lag), ``any`` (primary and replicas alike).

Write acknowledgement: ``primary`` (Redis's own: in the primary's memory), ``replicas:N``
(the proxy sends ``WAIT N timeout`` right after the write on the same connection and replies
an error if fewer than N replicas confirmed in time), ``fsync`` (``WAITAOF 1 0 timeout``:
on the primary's disk; Redis >= 7.2, checked at startup).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate

READ_POLICIES = ("primary", "prefer-replica", "any")


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Ack:
    kind: str = "primary"  # "primary" | "replicas" | "fsync"
    count: int = 0

    @classmethod
    def parse(cls, text: str) -> Ack:
        if text == "primary":
            return cls()
        if text == "fsync":
            return cls("fsync", 1)
        kind, _, count = text.partition(":")
        if kind == "replicas" and count.isdigit() and int(count) >= 1:
            return cls("replicas", int(count))
        raise PolicyError(f"write_ack must be 'primary', 'replicas:N' (N >= 1) or 'fsync', "
                          f"not {text!r}")

    def __str__(self) -> str:
        return {"primary": "primary", "fsync": "fsync"}.get(self.kind, f"replicas:{self.count}")


@dataclass(frozen=True)
class Policy:
    read: str = "primary"
    ack: Ack = Ack()

    def __post_init__(self) -> None:
        if self.read not in READ_POLICIES:
            raise PolicyError(f"read_policy must be one of {', '.join(READ_POLICIES)}, "
                              f"not {self.read!r}")


class Policies:
    """The default policy and per-pattern overrides (first matching glob wins)."""

    def __init__(self, default: Policy = Policy(),
                 rules: list[tuple[str, Policy]] | None = None) -> None:
        self.default = default
        self.rules = [(pattern, re.compile(translate(pattern).encode()), policy)
                      for pattern, policy in (rules or [])]
        everything = [default, *(p for _, _, p in self.rules)]
        #: Whether any read may leave the primary, any write waits for more than it
        self.replica_reads = any(p.read != "primary" for p in everything)
        self.acks = any(p.ack.kind != "primary" for p in everything)
        self.uses_fsync = any(p.ack.kind == "fsync" for p in everything)

    @property
    def active(self) -> bool:
        return self.replica_reads or self.acks

    def for_key(self, key: bytes) -> Policy:
        for _, regex, policy in self.rules:
            if regex.match(key):
                return policy
        return self.default

    def describe(self) -> list[tuple[str, str, str]]:
        rows = [(pattern, policy.read, str(policy.ack)) for pattern, _, policy in self.rules]
        return [*rows, ("*", self.default.read, str(self.default.ack))]
