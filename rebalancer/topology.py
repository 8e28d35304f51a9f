"""The topology: one immutable value saying which shard owns which arc of the ring.

Every change (a split, a migration started or finished, a shard added or removed) builds a new
value with ``epoch + 1``; nothing is edited in place, so a participant can hold one value for a
whole request and swap to the next one whole. The arc semantics are exactly
``router.ring``'s: a key whose hash is ``h`` belongs to the first token ``>= h``, wrapping past
the last token to the first, so a topology's ``placement()`` is the proxy's placement.

Arcs that are moving are not given to a shard in ``placement()``: a key in an arc of
``migrations[k]`` maps to the negative code ``-(k + 1)``, so the route that serves it can see
at once that it must run the move-then-serve dance (``migration_of(code)``) instead of going
to one node.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import msgpack

from router.continuum import KETAMA_POINTS_PER_SERVER
from router.hashkit import HASH_FUNCTIONS, get_hash
from router.nodes import NodeSpec
from router.placement import Placement
from router.ring import DEFAULT_POINTS_PER_NODE, Modula, Ring, xxh3_64

if TYPE_CHECKING:
    from router.config import ProxyConfig

__all__ = [
    "FORMAT_VERSION",
    "HASH_SPACE_32",
    "HASH_SPACE_64",
    "Migration",
    "Shard",
    "Topology",
    "TopologyError",
    "hash_space",
    "vnode_point_count",
    "vnode_tokens",
]

#: Bumped when ``to_bytes`` changes shape; ``from_bytes`` refuses versions it does not know.
FORMAT_VERSION = 1

HASH_SPACE_64 = 1 << 64
HASH_SPACE_32 = 1 << 32

#: Distributions built as rings of arcs (their arcs can move); modula cannot move.
RING_DISTRIBUTIONS = ("vnodes", "ketama")
DISTRIBUTIONS = (*RING_DISTRIBUTIONS, "modula")


class TopologyError(ValueError):
    """An edit or a value that would break the topology; the message says which and why."""


def hash_space(hash_name: str) -> int:
    """How many hash values a key hash can produce: arcs are measured in this space.

    ``xxh3`` is 64-bit; twemproxy's hashes all compare as unsigned 32-bit numbers (``crc32``
    only reaches 32767, a twemproxy quirk: its keys crowd the bottom of the 32-bit ring).
    """
    if hash_name not in HASH_FUNCTIONS:
        get_hash(hash_name)  # raises with the list of valid names
    return HASH_SPACE_64 if hash_name == "xxh3" else HASH_SPACE_32


def vnode_point_count(weight: int, mean_weight: float,
                      points_per_node: int = DEFAULT_POINTS_PER_NODE) -> int:
    """Tokens a node of ``weight`` gets on a vnode ring whose nodes weigh ``mean_weight`` on
    average: the same rounding ``router.ring.build_vnode_ring`` uses."""
    return max(1, round(points_per_node * weight / mean_weight))


def vnode_tokens(label: str, points: int, space: int = HASH_SPACE_64) -> list[int]:
    """The tokens ``build_vnode_ring`` gives the node called ``label`` with ``points`` points,
    sorted.

    Kept identical to the proxy's ring so that a shard added online lands exactly where a
    restart with the longer node list would put it. On a 32-bit ring (a ketama topology) the
    top 32 bits of each token are used, so the new tokens spread over that smaller space.
    """
    if space not in (HASH_SPACE_64, HASH_SPACE_32):
        raise ValueError("space must be 2**64 or 2**32")
    shift = 64 - (space.bit_length() - 1)
    base = label.encode()
    return sorted(xxh3_64(base + b"#%d" % j) >> shift for j in range(points))


# --- shards and migrations -------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """What owns arcs: a primary with its replicas (issue 8), under a stable id.

    The id is what placement hashed when the shard came from a config (the node's name if
    given, else the primary's ``host:port``); it stays the shard's identity when its primary
    moves (Sentinel failover) so migrations and the journal keep naming the same shard.
    """

    id: str
    primary: NodeSpec
    replicas: tuple[NodeSpec, ...] = ()
    weight: int = 1
    #: The Sentinel master name the primary is found by (carried for the proxy, not used here).
    sentinel_master: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise TopologyError("a shard needs a non-empty id")
        if self.weight < 1:
            raise TopologyError(f"shard {self.id}: weight must be at least 1, not {self.weight}")
        if not isinstance(self.replicas, tuple):
            object.__setattr__(self, "replicas", tuple(self.replicas))

    @classmethod
    def from_node(cls, node: NodeSpec) -> Shard:
        """The shard a config's node describes (its replicas and Sentinel name lifted out)."""
        return cls(id=node.label, primary=replace(node, replicas=(), sentinel_master=None),
                   replicas=tuple(node.replicas), weight=node.weight,
                   sentinel_master=node.sentinel_master)

    def node(self) -> NodeSpec:
        """The ``NodeSpec`` the backends connect with: replicas and Sentinel name folded back
        in, so code written for config nodes serves topology shards unchanged."""
        return replace(self.primary, weight=self.weight, replicas=self.replicas,
                       sentinel_master=self.sentinel_master)


@dataclass(frozen=True)
class Migration:
    """Arcs moving from one shard to another, named by their end tokens.

    While it exists, keys in these arcs are served move-then-serve; ``finish_migration`` gives
    the arcs to the target, ``cancel_migration`` leaves them with the source.
    """

    id: int
    source: str
    target: str
    arcs: tuple[int, ...]

    def __post_init__(self) -> None:
        arcs = tuple(sorted(set(self.arcs)))
        if not arcs:
            raise TopologyError(f"migration {self.id} has no arcs")
        if self.source == self.target:
            raise TopologyError(f"migration {self.id} moves arcs from {self.source} to itself")
        object.__setattr__(self, "arcs", arcs)


# --- the topology ----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Topology:
    """Epoch, shards, ring (sorted ``tokens``, ``owners[i]`` = shard index owning the arc that
    ends at ``tokens[i]``) and the migrations in progress.

    A modula topology (twemproxy's ``modula``) has no ring: ``tokens`` is empty and ``owners``
    holds the modula slot table. It serves, but every edit is refused: modula moves almost
    every key when a server is added, so there is nothing to move arc by arc.

    Tokens are strictly increasing: equal tokens in a ketama continuum are collapsed to the
    first one, the only one a lookup can ever reach (``bisect_left``).
    """

    epoch: int
    shards: tuple[Shard, ...]
    tokens: tuple[int, ...]
    owners: tuple[int, ...]
    hash: str = "xxh3"
    distribution: str = "vnodes"
    hash_tag: str | None = "{}"
    migrations: tuple[Migration, ...] = ()
    next_migration_id: int = 1
    #: Points per node of mean weight on this ring (4096 for vnodes, 160 for ketama): what a
    #: shard added online gets, so its share matches the others'.
    points_per_node: int = DEFAULT_POINTS_PER_NODE

    def __post_init__(self) -> None:
        for name in ("shards", "tokens", "owners", "migrations"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def __repr__(self) -> str:
        # The ring holds thousands of tokens: a full repr would drown logs and test reports.
        moving = ", ".join(f"{m.id}:{m.source}->{m.target}({len(m.arcs)})"
                           for m in self.migrations)
        return (f"Topology(epoch={self.epoch}, {self.distribution}/{self.hash}, "
                f"shards=[{', '.join(s.id for s in self.shards)}], "
                f"{len(self.tokens) or len(self.owners)} arcs, migrations=[{moving}])")

    # construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ProxyConfig) -> Topology:
        """Epoch 1 of the topology ``config`` describes: the same key → shard mapping the
        proxy computes from it, one shard per config node (in config order)."""
        if config.distribution in RING_DISTRIBUTIONS:
            token_space = HASH_SPACE_64 if config.distribution == "vnodes" else HASH_SPACE_32
            if hash_space(config.hash) != token_space:
                raise TopologyError(
                    f"hash {config.hash!r} does not fit distribution {config.distribution!r}: "
                    f"its keys hash to {hash_space(config.hash).bit_length() - 1}-bit values "
                    f"but the ring's tokens are {token_space.bit_length() - 1}-bit, so almost "
                    "every key lands on one shard (use xxh3 with vnodes, a twemproxy hash "
                    "with ketama)")
        placement = config.placement()
        shards = tuple(Shard.from_node(node) for node in config.nodes)
        common: dict[str, Any] = {"hash": config.hash, "hash_tag": config.hash_tag,
                                  "distribution": config.distribution}
        distribution = placement.distribution
        if isinstance(distribution, Modula):
            return cls(epoch=1, shards=shards, tokens=(), owners=tuple(distribution.slots),
                       points_per_node=1, **common)
        tokens, owners = _dedupe(distribution.tokens, distribution.owners)
        points = (config.points_per_node if config.distribution == "vnodes"
                  else KETAMA_POINTS_PER_SERVER)
        return cls(epoch=1, shards=shards, tokens=tokens, owners=owners,
                   points_per_node=points, **common)

    # validation -----------------------------------------------------------------------------

    def _validate(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise TopologyError(f"unknown distribution {self.distribution!r}: a topology is one "
                                f"of {', '.join(DISTRIBUTIONS)}")
        try:
            space = hash_space(self.hash)
        except ValueError as exc:
            raise TopologyError(str(exc)) from None
        if self.hash_tag is not None and len(self.hash_tag.encode("utf-8", "surrogateescape")) != 2:
            raise TopologyError(f"hash_tag must be two characters, not {self.hash_tag!r}")
        if self.epoch < 0:
            raise TopologyError("epoch must not be negative")
        if not self.shards:
            raise TopologyError("a topology needs at least one shard")
        ids = [shard.id for shard in self.shards]
        if len(set(ids)) != len(ids):
            raise TopologyError("shard ids must be unique")
        count = len(self.shards)
        if not self.owners:
            raise TopologyError("a topology needs at least one arc (or modula slot)")
        if any(not 0 <= owner < count for owner in self.owners):
            raise TopologyError("an owner index is out of range of the shards")
        if self.points_per_node < 1:
            raise TopologyError("points_per_node must be at least 1")
        if self.distribution == "modula":
            if self.tokens or self.migrations:
                raise TopologyError("a modula topology has no ring tokens and no migrations")
            return
        tokens = self.tokens
        if len(tokens) != len(self.owners):
            raise TopologyError("tokens and owners differ in length")
        if tokens[0] < 0 or tokens[-1] >= space:
            raise TopologyError(f"tokens must lie in 0..2**{space.bit_length() - 1}-1 for "
                                f"hash {self.hash}")
        if any(a >= b for a, b in zip(tokens, tokens[1:], strict=False)):
            raise TopologyError("tokens must be strictly increasing")
        index = self._token_index
        seen: set[int] = set()
        migration_ids: set[int] = set()
        for migration in self.migrations:
            if migration.id in migration_ids or migration.id >= self.next_migration_id:
                raise TopologyError(f"migration id {migration.id} is repeated or not below "
                                    f"next_migration_id {self.next_migration_id}")
            migration_ids.add(migration.id)
            if migration.source not in ids or migration.target not in ids:
                raise TopologyError(f"migration {migration.id} names an unknown shard")
            source = ids.index(migration.source)
            for arc in migration.arcs:
                i = index.get(arc)
                if i is None:
                    raise TopologyError(f"migration {migration.id}: no arc ends at {arc}")
                if arc in seen:
                    raise TopologyError(f"arc {arc} is in two migrations")
                if self.owners[i] != source:
                    raise TopologyError(f"migration {migration.id}: arc {arc} is not owned by "
                                        f"its source {migration.source}")
                seen.add(arc)

    # cached lookups -------------------------------------------------------------------------

    @cached_property
    def _token_index(self) -> dict[int, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    @cached_property
    def _shard_index(self) -> dict[str, int]:
        return {shard.id: i for i, shard in enumerate(self.shards)}

    @cached_property
    def _migrating(self) -> dict[int, int]:
        """End token → index into ``migrations``."""
        return {arc: k for k, migration in enumerate(self.migrations) for arc in migration.arcs}

    @cached_property
    def _placement(self) -> Placement:
        tag = self.hash_tag.encode("utf-8", "surrogateescape") if self.hash_tag else None
        if self.distribution == "modula":
            return Placement(get_hash(self.hash), Modula(self.owners), tag)
        owners = list(self.owners)
        for arc, k in self._migrating.items():
            owners[self._token_index[arc]] = -(k + 1)
        return Placement(get_hash(self.hash), Ring(self.tokens, owners), tag)

    # queries --------------------------------------------------------------------------------

    @property
    def space(self) -> int:
        """The size of the hash space arcs are measured in (2**64 for xxh3, else 2**32)."""
        return hash_space(self.hash)

    @property
    def is_ring(self) -> bool:
        return self.distribution != "modula"

    def placement(self) -> Placement:
        """Key → shard index, or ``-(k + 1)`` for a key in an arc of ``migrations[k]``.

        Built once per topology value (it is immutable), so calling it per request is cheap.
        """
        return self._placement

    def nodes(self) -> tuple[NodeSpec, ...]:
        """One ``NodeSpec`` per shard, by shard index: what the backends open connections to."""
        return tuple(shard.node() for shard in self.shards)

    def shard_index(self, id: str) -> int:
        """The index of shard ``id`` (what ``owners`` and ``placement()`` speak)."""
        try:
            return self._shard_index[id]
        except KeyError:
            known = ", ".join(shard.id for shard in self.shards)
            raise TopologyError(f"no shard {id!r} (shards: {known})") from None

    def shard(self, id: str) -> Shard:
        return self.shards[self.shard_index(id)]

    def migration(self, id: int) -> Migration:
        """The migration in progress with this id."""
        for migration in self.migrations:
            if migration.id == id:
                return migration
        raise TopologyError(f"no migration {id} in progress")

    def migration_of(self, code: int) -> Migration:
        """The migration a negative placement code stands for."""
        if code >= 0 or -code > len(self.migrations):
            raise TopologyError(f"placement code {code} names no migration")
        return self.migrations[-code - 1]

    def migrating_arcs(self) -> dict[int, Migration]:
        """End token → the migration moving that arc."""
        return {arc: self.migrations[k] for arc, k in self._migrating.items()}

    def arcs(self) -> list[tuple[int, int, int]]:
        """``(start_exclusive, end_inclusive, owner_index)`` per arc, in token order; the first
        arc wraps (its start is the last token). Owners are the current owners: an arc in
        migration still belongs to its source until the migration finishes."""
        self._require_ring("list arcs")
        tokens = self.tokens
        starts = (tokens[-1], *tokens[:-1])
        return list(zip(starts, tokens, self.owners, strict=True))

    def arcs_of(self, shard_id: str) -> list[tuple[int, int, int]]:
        """The arcs shard ``shard_id`` owns now, as ``arcs()`` gives them."""
        index = self.shard_index(shard_id)
        return [arc for arc in self.arcs() if arc[2] == index]

    def arc_containing(self, h: int) -> int:
        """The end token of the arc hash ``h`` falls in."""
        self._require_ring("find an arc")
        i = bisect_left(self.tokens, h)
        return self.tokens[i if i < len(self.tokens) else 0]

    def arc_start(self, end: int) -> int:
        """The (exclusive) start of the arc ending at ``end``."""
        i = self._index_of(end)
        return self.tokens[i - 1]  # i == 0 wraps to the last token

    def arc_length(self, end: int) -> int:
        """How many hash values the arc ending at ``end`` holds."""
        return _arc_length(self.arc_start(end), end, self.space)

    def owner_of(self, end: int) -> int:
        """The shard index owning the arc ending at ``end`` now."""
        return self.owners[self._index_of(end)]

    def ownership_fractions(self) -> dict[str, float]:
        """Each shard's share of the hash space (every shard listed, 0.0 when it owns nothing).

        This is where keys go when they hash uniformly; per-arc key counts say where they are.
        """
        shares = dict.fromkeys((shard.id for shard in self.shards), 0.0)
        if self.distribution == "modula":
            for owner in self.owners:
                shares[self.shards[owner].id] += 1 / len(self.owners)
            return shares
        space = self.space
        for start, end, owner in self.arcs():
            shares[self.shards[owner].id] += _arc_length(start, end, space) / space
        return shares

    def vnode_tokens(self, shard: Shard, points: int | None = None) -> list[int]:
        """The tokens a vnode ring gives ``shard`` when it joins this ring: its label hashed
        as ``build_vnode_ring`` does, ``points`` (default ``points_per_node``) scaled by its
        weight against the mean weight of the *other* shards, which is the density the
        existing tokens have, so the newcomer's share follows its weight."""
        others = [s.weight for s in self.shards if s.id != shard.id]
        mean = sum(others) / len(others) if others else shard.weight
        count = vnode_point_count(shard.weight, mean, points or self.points_per_node)
        return vnode_tokens(shard.id, count, self.space)

    # edits ----------------------------------------------------------------------------------

    def split(self, at_tokens: Iterable[int]) -> Topology:
        """Cut arcs at ``at_tokens``: each new token ends a new arc with the owner (and the
        migration, if any) of the arc it fell in, so placement does not change.

        Tokens already on the ring are ignored; when nothing is new the same value comes back
        (same epoch), so a caller can skip a store write and a barrier.
        """
        self._require_ring("split arcs")
        space = self.space
        new = sorted(set(at_tokens) - self._token_index.keys())
        if not new:
            return self
        if new[0] < 0 or new[-1] >= space:
            raise TopologyError(f"split points must lie in 0..2**{space.bit_length() - 1}-1")
        added: dict[int, list[int]] = defaultdict(list)
        pairs = list(zip(self.tokens, self.owners, strict=True))
        for token in new:
            end = self.arc_containing(token)
            pairs.append((token, self.owners[self._token_index[end]]))
            k = self._migrating.get(end)
            if k is not None:
                added[k].append(token)
        pairs.sort()
        migrations = tuple(
            replace(m, arcs=m.arcs + tuple(added[k])) if k in added else m
            for k, m in enumerate(self.migrations))
        return self._next(tokens=tuple(t for t, _ in pairs), owners=tuple(o for _, o in pairs),
                          migrations=migrations)

    def start_migration(self, arcs: Iterable[int], target: str) -> tuple[Topology, list[Migration]]:
        """Mark ``arcs`` (end tokens) as moving to ``target``: one migration per current owner.

        Refused, with the offending arc named: an unknown token, an arc already migrating, an
        arc the target already owns. Nothing changes ownership yet; keys move while the
        migration exists and ``finish_migration`` flips ownership.
        """
        return self.start_migrations([(arcs, target)])

    def start_migrations(self, moves: Iterable[tuple[Iterable[int], str]]
                         ) -> tuple[Topology, list[Migration]]:
        """Several ``start_migration`` calls as one edit (one epoch, so one barrier): what a
        plan with several targets becomes."""
        self._require_ring("start a migration")
        next_id = self.next_migration_id
        claimed: set[int] = set()
        created: list[Migration] = []
        for arcs, target in moves:
            target_index = self.shard_index(target)
            by_source: dict[int, list[int]] = defaultdict(list)
            wanted = sorted(set(arcs))
            if not wanted:
                raise TopologyError("a migration needs at least one arc")
            for arc in wanted:
                i = self._token_index.get(arc)
                if i is None:
                    raise TopologyError(f"no arc ends at token {arc}")
                if arc in self._migrating:
                    raise TopologyError(f"arc ending at {arc} is already migrating "
                                        f"(migration {self.migrations[self._migrating[arc]].id})")
                if arc in claimed:
                    raise TopologyError(f"arc ending at {arc} is named twice")
                owner = self.owners[i]
                if owner == target_index:
                    raise TopologyError(f"arc ending at {arc} is already owned by {target}")
                by_source[owner].append(arc)
                claimed.add(arc)
            for source in sorted(by_source):
                created.append(Migration(next_id, self.shards[source].id, target,
                                         tuple(by_source[source])))
                next_id += 1
        if not created:
            return self, []
        topology = self._next(migrations=self.migrations + tuple(created),
                              next_migration_id=next_id)
        return topology, created

    def finish_migration(self, id: int) -> Topology:
        """The migration's arcs now belong to its target; the migration is gone.

        Only call this once the source holds no key of those arcs (the engine's job)."""
        migration = self.migration(id)
        target = self.shard_index(migration.target)
        owners = list(self.owners)
        for arc in migration.arcs:
            owners[self._token_index[arc]] = target
        return self._next(owners=tuple(owners),
                          migrations=tuple(m for m in self.migrations if m.id != id))

    def cancel_migration(self, id: int) -> Topology:
        """Drop the migration; its arcs stay with the source.

        The topology cannot undo data: keys the engine already MIGRATEd to the target must be
        moved back by the engine (a reverse migration of the same arcs), or they become
        invisible once the arcs are served by the source alone again. The engine should start
        that reverse move in the same edit, or keep the migration until it has moved them.
        """
        self.migration(id)
        return self._next(migrations=tuple(m for m in self.migrations if m.id != id))

    def add_shard(self, shard: Shard) -> Topology:
        """Append ``shard``; it owns nothing until arcs are migrated to it."""
        self._require_ring("add a shard")
        if shard.id in self._shard_index:
            raise TopologyError(f"shard {shard.id!r} already exists")
        for other in self.shards:
            if other.primary.address == shard.primary.address:
                raise TopologyError(f"shard {other.id!r} already has primary "
                                    f"{shard.primary.address}")
        return self._next(shards=(*self.shards, shard))

    def remove_shard(self, id: str) -> Topology:
        """Drop a shard that owns no arc and is in no migration; owner indices above it shift
        down by one (so placement codes of other shards change: participants must swap whole
        topologies, never mix indices from two epochs)."""
        self._require_ring("remove a shard")
        index = self.shard_index(id)
        owned = sum(1 for owner in self.owners if owner == index)
        if owned:
            raise TopologyError(f"shard {id!r} still owns {owned} arcs: migrate them away first")
        for migration in self.migrations:
            if id in (migration.source, migration.target):
                raise TopologyError(f"shard {id!r} is in migration {migration.id}")
        owners = tuple(owner - (owner > index) for owner in self.owners)
        shards = self.shards[:index] + self.shards[index + 1:]
        return self._next(shards=shards, owners=owners)

    def merge_adjacent(self) -> Topology:
        """Drop every token whose arc has the same owner as the next arc and neither is
        migrating: the two arcs become one, placement does not change. Keeps the ring (and
        the proxy's lookup array) small after many moves. Returns the same value when
        nothing merges."""
        self._require_ring("merge arcs")
        tokens, owners = self.tokens, self.owners
        n = len(tokens)
        migrating = self._migrating
        keep = [True] * n
        for i in range(n):
            j = (i + 1) % n
            if (j != i and owners[i] == owners[j] and tokens[i] not in migrating
                    and tokens[j] not in migrating):
                keep[i] = False
        if all(keep):
            return self
        if not any(keep):
            keep[-1] = True  # one owner everywhere: one token is enough
        return self._next(tokens=tuple(t for t, k in zip(tokens, keep, strict=True) if k),
                          owners=tuple(o for o, k in zip(owners, keep, strict=True) if k))

    # serialization --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact msgpack: tokens as packed little-endian uint64, owners as uint32."""
        body = {
            "v": FORMAT_VERSION,
            "epoch": self.epoch,
            "hash": self.hash,
            "distribution": self.distribution,
            "hash_tag": (self.hash_tag.encode("utf-8", "surrogateescape")
                         if self.hash_tag is not None else None),
            "points_per_node": self.points_per_node,
            "shards": [_shard_to_dict(shard) for shard in self.shards],
            "tokens": _pack(self.tokens, "Q"),
            "owners": _pack(self.owners, "I"),
            "migrations": [[m.id, m.source, m.target, _pack(m.arcs, "Q")]
                           for m in self.migrations],
            "next_migration_id": self.next_migration_id,
        }
        return msgpack.packb(body, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Topology:
        """The value ``to_bytes`` wrote; refuses unknown format versions and bad values."""
        try:
            body = msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise TopologyError(f"topology data is not valid msgpack: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != FORMAT_VERSION:
            raise TopologyError(f"unknown topology format version {body.get('v')!r}"
                                if isinstance(body, dict) else "topology data is not a map")
        tag = body["hash_tag"]
        return cls(
            epoch=body["epoch"],
            shards=tuple(_shard_from_dict(d) for d in body["shards"]),
            tokens=tuple(_unpack(body["tokens"], "Q")),
            owners=tuple(_unpack(body["owners"], "I")),
            hash=body["hash"],
            distribution=body["distribution"],
            hash_tag=tag.decode("utf-8", "surrogateescape") if tag is not None else None,
            migrations=tuple(Migration(mid, source, target, tuple(_unpack(arcs, "Q")))
                             for mid, source, target, arcs in body["migrations"]),
            next_migration_id=body["next_migration_id"],
            points_per_node=body["points_per_node"],
        )

    def to_json_dict(self, *, ring: bool = True, redact: bool = True) -> dict[str, Any]:
        """A JSON-ready view for humans and ``admin --json``: shards with their share of the
        hash space, migrations, and (``ring=True``) the tokens and owners. Passwords are
        replaced by ``"***"`` unless ``redact=False`` (which ``from_json_dict`` needs)."""
        shares = self.ownership_fractions()
        arc_counts = defaultdict(int)
        for owner in self.owners:
            arc_counts[owner] += 1
        shards = []
        for i, shard in enumerate(self.shards):
            entry = _shard_to_dict(shard, redact=redact)
            entry["arcs"] = arc_counts[i] if self.is_ring else 0
            entry["share"] = shares[shard.id]
            shards.append(entry)
        out: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "epoch": self.epoch,
            "hash": self.hash,
            "distribution": self.distribution,
            "hash_tag": self.hash_tag,
            "points_per_node": self.points_per_node,
            "shards": shards,
            "arc_count": len(self.tokens),
            "migrations": [{"id": m.id, "source": m.source, "target": m.target,
                            "arcs": list(m.arcs)} for m in self.migrations],
            "next_migration_id": self.next_migration_id,
        }
        if ring:
            out["tokens"] = list(self.tokens)
            out["owners"] = list(self.owners)
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Topology:
        """The value ``to_json_dict(ring=True, redact=False)`` described."""
        if data.get("format") != FORMAT_VERSION or "tokens" not in data:
            raise TopologyError("not a full topology JSON (need format 1 with tokens)")
        return cls(
            epoch=data["epoch"],
            shards=tuple(_shard_from_dict(d) for d in data["shards"]),
            tokens=tuple(data["tokens"]),
            owners=tuple(data["owners"]),
            hash=data["hash"],
            distribution=data["distribution"],
            hash_tag=data["hash_tag"],
            migrations=tuple(Migration(m["id"], m["source"], m["target"], tuple(m["arcs"]))
                             for m in data["migrations"]),
            next_migration_id=data["next_migration_id"],
            points_per_node=data["points_per_node"],
        )

    # helpers --------------------------------------------------------------------------------

    def _next(self, **changes: Any) -> Topology:
        return replace(self, epoch=self.epoch + 1, **changes)

    def _require_ring(self, what: str) -> None:
        if self.distribution == "modula":
            raise TopologyError(
                f"cannot {what}: distribution 'modula' has no ring of arcs (a key's server "
                "is hash % slots, so adding or removing a server moves almost every key); "
                "move the data to a 'ketama' or 'vnodes' pool offline to rebalance online")

    def _index_of(self, end: int) -> int:
        self._require_ring("find an arc")
        i = self._token_index.get(end)
        if i is None:
            raise TopologyError(f"no arc ends at token {end}")
        return i


def _arc_length(start: int, end: int, space: int) -> int:
    """Hash values in ``(start, end]`` on a ring of ``space`` values (a lone token's arc is
    the whole ring)."""
    return (end - start) % space or space


def _dedupe(tokens: Sequence[int], owners: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Keep the first of equal tokens: ``bisect_left`` never reaches the others, whose arcs
    are empty."""
    out_t: list[int] = []
    out_o: list[int] = []
    for token, owner in zip(tokens, owners, strict=True):
        if out_t and out_t[-1] == token:
            continue
        out_t.append(token)
        out_o.append(owner)
    return tuple(out_t), tuple(out_o)


def _pack(values: Sequence[int], code: str) -> bytes:
    packed = array(code, values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _unpack(data: bytes, code: str) -> list[int]:
    unpacked = array(code)
    unpacked.frombytes(data)
    if sys.byteorder == "big":
        unpacked.byteswap()
    return unpacked.tolist()


if array("Q").itemsize != 8 or array("I").itemsize != 4:  # pragma: no cover
    raise ImportError("rebalancer.topology needs 8-byte 'Q' and 4-byte 'I' arrays")


def _node_to_dict(node: NodeSpec, redact: bool = False) -> dict[str, Any]:
    """The fields of ``node`` that differ from their defaults (compact, and robust to new
    NodeSpec fields with defaults)."""
    out: dict[str, Any] = {}
    for f in fields(NodeSpec):
        value = getattr(node, f.name)
        if f.default is not MISSING and value == f.default:
            continue
        if f.name == "replicas":
            value = [_node_to_dict(r, redact) for r in value]
        elif f.name == "password" and redact and value is not None:
            value = "***"
        out[f.name] = value
    return out


def _node_from_dict(data: Mapping[str, Any]) -> NodeSpec:
    values = dict(data)
    if "replicas" in values:
        values["replicas"] = tuple(_node_from_dict(r) for r in values["replicas"])
    return NodeSpec(**values)


def _shard_to_dict(shard: Shard, redact: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": shard.id, "primary": _node_to_dict(shard.primary, redact),
                           "weight": shard.weight}
    if shard.replicas:
        out["replicas"] = [_node_to_dict(r, redact) for r in shard.replicas]
    if shard.sentinel_master is not None:
        out["sentinel_master"] = shard.sentinel_master
    return out


def _shard_from_dict(data: Mapping[str, Any]) -> Shard:
    return Shard(id=data["id"], primary=_node_from_dict(data["primary"]),
                 replicas=tuple(_node_from_dict(r) for r in data.get("replicas", ())),
                 weight=data.get("weight", 1), sentinel_master=data.get("sentinel_master"))

