"""The planner: which arcs to move where, from sampled key counts and measured op rates.

Plans are computed, never applied here: a ``Plan`` says which split points to insert, which
arcs move from which shard to which, and the load each shard is expected to carry afterwards.
The engine applies it (``Plan.apply``: one topology edit, one epoch, one barrier), and the
admin CLI shows ``Plan.describe()`` for a dry run.

Everything is deterministic: iteration is over sorted tokens and shard indices, ties are broken
by index, and nothing is random, so the same inputs always give the same plan.

Loads are estimates. ``arc_keys`` and ``arc_ops`` name arcs by end token; an arc missing from
them counts as empty; a token that is not on the ring (counts taken before a merge) is credited
to the arc containing it; and when an arc is split, its counts are divided in proportion to the
hash range of each piece. Arcs already migrating count for their target (the state the cluster
is heading to) and are never moved again by a plan.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .topology import Migration, Shard, Topology, TopologyError

__all__ = [
    "Plan",
    "PlannedMove",
    "ShardLoad",
    "plan_add_node",
    "plan_rebalance",
    "plan_remove_node",
]

DIMENSIONS = ("keys", "ops")


@dataclass(frozen=True)
class PlannedMove:
    """Arcs (end tokens of the plan's topology) moving from ``source`` to ``target``."""

    arcs: tuple[int, ...]
    source: str
    target: str
    keys: int
    bytes_estimate: int
    ops: float = 0.0
    #: The fraction of the hash space these arcs cover.
    share: float = 0.0


@dataclass(frozen=True)
class ShardLoad:
    """One shard's estimated load: keys, ops/s, share of the hash space, and its weight."""

    keys: float
    ops: float
    share: float
    weight: int = 1


@dataclass(frozen=True)
class Plan:
    """A proposal: prepare ``base`` (add a shard, insert split points) into ``topology``, then
    move ``moves``. ``load_after`` is what each shard should carry once the moves finish."""

    kind: str
    base: Topology
    #: ``base`` with the shard added and the split points inserted (epoch ``base.epoch + 1``
    #: when that changed anything): the topology whose tokens the moves name.
    topology: Topology
    moves: tuple[PlannedMove, ...]
    load_before: Mapping[str, ShardLoad]
    load_after: Mapping[str, ShardLoad]
    split_points: tuple[int, ...] = ()
    added_shard: Shard | None = None
    #: For remove-node: the shard to ``remove_shard`` once the moves have finished.
    remove_after: str | None = None
    #: For rebalance: whether ``load_after`` is within the target (False: the churn budget or
    #: the arcs' granularity stopped the plan short; run another round later).
    reached_target: bool = True
    target: float | None = None
    churn: float | None = None
    keys_known: bool = True
    bytes_known: bool = False
    ops_known: bool = False
    notes: tuple[str, ...] = field(default=())

    # totals ---------------------------------------------------------------------------------

    @property
    def keys_moved(self) -> int:
        return sum(move.keys for move in self.moves)

    @property
    def bytes_moved(self) -> int:
        return sum(move.bytes_estimate for move in self.moves)

    @property
    def share_moved(self) -> float:
        return sum(move.share for move in self.moves)

    @property
    def total_keys(self) -> float:
        return sum(load.keys for load in self.load_before.values())

    def imbalance(self, dimension: str = "keys", after: bool = True) -> float:
        """max/mean of a dimension ("keys", "ops" or "share"), per unit of shard weight (after
        a remove-node plan, over the shards that stay)."""
        if after:
            return _imbalance(self._staying(), dimension)
        return _imbalance(self.load_before, dimension)

    def _staying(self) -> dict[str, ShardLoad]:
        return {k: v for k, v in self.load_after.items() if k != self.remove_after}

    # applying -------------------------------------------------------------------------------

    def apply(self, current: Topology | None = None) -> tuple[Topology, list[Migration]]:
        """The topology that starts this plan, as one edit of ``current`` (default: ``base``):
        shard added, split points inserted, every move started, epoch + 1.

        Refused if an arc is no longer owned by its planned source (the topology changed
        since planning: re-plan). Only the new topology's epoch counts for the barrier, so
        doing it all in one edit costs one barrier instead of one per step.
        """
        start = self.base if current is None else current
        topology = start
        if self.added_shard is not None and self.added_shard.id not in _ids(topology):
            topology = topology.add_shard(self.added_shard)
        topology = topology.split(self.split_points)
        migrating = topology.migrating_arcs()
        for move in self.moves:
            source = topology.shard_index(move.source)
            for arc in move.arcs:
                if topology.owner_of(arc) != source or arc in migrating:
                    raise TopologyError(f"stale plan: arc ending at {arc} is no longer owned "
                                        f"by {move.source} alone; plan again")
        migrations: list[Migration] = []
        if self.moves:
            topology, migrations = topology.start_migrations(
                [(move.arcs, move.target) for move in self.moves])
        if topology is not start:
            topology = replace(topology, epoch=start.epoch + 1)
        return topology, migrations

    # showing --------------------------------------------------------------------------------

    def describe(self) -> str:
        """The dry-run table: every move (arcs, source → target, keys, bytes, share) and each
        shard's expected load after, against the mean."""
        lines = [self._headline()]
        space_bits = self.base.space.bit_length() - 1
        width = space_bits // 4
        if self.split_points:
            lines.append(f"  {len(self.split_points)} split points inserted")
        if not self.moves:
            lines.append("  nothing to move")
        else:
            rows = [("#", "arcs", "source", "", "target", "keys", "bytes", "share", "ops/s")]
            for n, move in enumerate(self.moves, 1):
                rows.append((str(n), str(len(move.arcs)), move.source, "->", move.target,
                             self._keys(move.keys), self._bytes(move.bytes_estimate),
                             f"{move.share:.2%}", self._ops(move.ops)))
            rows.append(("", str(sum(len(m.arcs) for m in self.moves)), "total", "", "",
                         self._keys(self.keys_moved), self._bytes(self.bytes_moved),
                         f"{self.share_moved:.2%}", self._ops(sum(m.ops for m in self.moves))))
            lines.extend("  " + line for line in _table(rows, right={0, 1, 5, 6, 7, 8}))
            for n, move in enumerate(self.moves, 1):
                if len(move.arcs) <= 3:
                    ranges = ", ".join(
                        f"(0x{self.topology.arc_start(arc):0{width}x}, 0x{arc:0{width}x}]"
                        for arc in move.arcs)
                    lines.append(f"  move {n} arcs: {ranges}")
            if self.keys_known and self.total_keys:
                lines.append(f"  moves {self.keys_moved / self.total_keys:.1%} of "
                             f"{self._keys(self.total_keys)} keys")
        lines.append("")
        lines.append("expected load after:")
        rows = [("shard", "weight", "keys", "x mean", "ops/s", "x mean", "share")]
        staying = self._staying()
        mean_keys = _mean_per_weight(staying, "keys") if self.keys_known else 0.0
        mean_ops = _mean_per_weight(staying, "ops") if self.ops_known else 0.0
        for shard_id, load in self.load_after.items():
            name = shard_id if shard_id in staying else f"{shard_id} (removed)"
            rows.append((name, str(load.weight), self._keys(load.keys),
                         _ratio(load.keys, mean_keys * load.weight),
                         self._ops(load.ops), _ratio(load.ops, mean_ops * load.weight),
                         f"{load.share:.2%}"))
        lines.extend("  " + line for line in _table(rows, right={1, 2, 3, 4, 5, 6}))
        summary = []
        for dimension in (("keys",) if self.keys_known else ("share",)) + (
                ("ops",) if self.ops_known else ()):
            summary.append(f"{dimension} {self.imbalance(dimension, after=False):.2f} -> "
                           f"{self.imbalance(dimension):.2f}")
        lines.append("  max/mean: " + ", ".join(summary))
        if self.target is not None:
            verdict = "reached" if self.reached_target else "NOT reached"
            lines.append(f"  target {self.target:.2f}: {verdict} (churn budget "
                         f"{self.churn:.0%} of keys)")
        if self.remove_after:
            lines.append(f"  then remove shard {self.remove_after}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, Any]:
        """The plan for ``--json``: moves (with their arcs), loads before and after."""
        def loads(table: Mapping[str, ShardLoad]) -> dict[str, dict[str, float]]:
            return {k: {"keys": v.keys, "ops": v.ops, "share": v.share, "weight": v.weight}
                    for k, v in table.items()}
        return {
            "kind": self.kind,
            "base_epoch": self.base.epoch,
            "split_points": list(self.split_points),
            "added_shard": self.added_shard.id if self.added_shard else None,
            "remove_after": self.remove_after,
            "moves": [{"arcs": list(m.arcs), "source": m.source, "target": m.target,
                       "keys": m.keys, "bytes": m.bytes_estimate, "ops": m.ops,
                       "share": m.share} for m in self.moves],
            "keys_moved": self.keys_moved,
            "bytes_moved": self.bytes_moved,
            "load_before": loads(self.load_before),
            "load_after": loads(self.load_after),
            "reached_target": self.reached_target,
            "target": self.target,
            "churn": self.churn,
            "notes": list(self.notes),
        }

    def _headline(self) -> str:
        what = {"add-node": f"add shard {self.added_shard.id if self.added_shard else '?'}",
                "remove-node": f"remove shard {self.remove_after}",
                "rebalance": "rebalance"}.get(self.kind, self.kind)
        return f"plan: {what} (from epoch {self.base.epoch}, {len(self.moves)} moves)"

    def _keys(self, value: float) -> str:
        return f"{round(value):,}" if self.keys_known else "?"

    def _bytes(self, value: float) -> str:
        return _human_bytes(value) if self.bytes_known else "-"

    def _ops(self, value: float) -> str:
        return f"{value:,.1f}" if self.ops_known else "-"


# --- the three planners ----------------------------------------------------------------------


def plan_add_node(topology: Topology, new_shard: Shard, points: int | None = None,
                  arc_keys: Mapping[int, float] | None = None,
                  arc_ops: Mapping[int, float] | None = None,
                  arc_bytes: Mapping[int, float] | None = None,
                  bytes_per_key: float | None = None) -> Plan:
    """Give ``new_shard`` the arcs a vnode ring would give it, cut out of every other shard.

    Its vnode tokens (``Topology.vnode_tokens``) become split points, and each arc ending at
    one of them moves to it: about ``weight / total weight`` of the keys, taken from every
    other shard in proportion to the arcs it owns, and nothing else moves. Tokens falling in
    an arc that is already migrating are skipped (noted in the plan). ``new_shard`` may
    already be in the topology if it owns nothing yet.
    """
    _require_ring(topology)
    if new_shard.id in _ids(topology):
        index = topology.shard_index(new_shard.id)
        if index in topology.owners or any(m.target == new_shard.id for m in topology.migrations):
            raise TopologyError(f"shard {new_shard.id!r} already owns or receives arcs; "
                                "use rebalance to give it more")
        prepared, added = topology, None
        new_shard = topology.shards[index]
    else:
        prepared, added = topology.add_shard(new_shard), new_shard
        index = len(topology.shards)
    model = _Model(prepared, arc_keys, arc_ops, arc_bytes, bytes_per_key)
    before = model.loads()
    skipped = 0
    for token in prepared.vnode_tokens(new_shard, points):
        arc = model.arc_containing(token)
        if arc.end == token and arc.owner != index:
            continue  # an existing shard already has this token; like build_vnode_ring, it wins
        if arc.migration is not None:
            skipped += 1
            continue
        if arc.owner == index:
            continue  # a repeated token
        model.move(model.split_at(token), index)
    notes = []
    if skipped:
        notes.append(f"{skipped} of the new shard's tokens fall in arcs already migrating; "
                     "they are left out (rebalance later to even out)")
    return model.plan("add-node", topology, before, added=added, notes=notes)


def plan_remove_node(topology: Topology, shard_id: str,
                     arc_keys: Mapping[int, float] | None = None,
                     arc_ops: Mapping[int, float] | None = None,
                     arc_bytes: Mapping[int, float] | None = None,
                     bytes_per_key: float | None = None,
                     key_weight: float = 1.0, ops_weight: float = 1.0) -> Plan:
    """Drain every arc of ``shard_id`` to the other shards, spread by load.

    Greedy, biggest arc first: each arc goes to the shard that is least loaded at that moment
    (keys and ops/s each as a fraction of their total, weighted by ``key_weight`` and
    ``ops_weight``, per unit of shard weight). With the many small arcs of a vnode ring this
    lands every receiver within a few percent of the others.
    """
    _require_ring(topology)
    source = topology.shard_index(shard_id)
    receivers = [i for i in range(len(topology.shards)) if i != source]
    if not receivers:
        raise TopologyError(f"cannot remove {shard_id!r}: it is the only shard")
    model = _Model(topology, arc_keys, arc_ops, arc_bytes, bytes_per_key)
    before = model.loads()
    notes = []
    for migration in topology.migrations:
        if migration.target == shard_id:
            notes.append(f"migration {migration.id} is still moving arcs to {shard_id}: let it "
                         "finish (or cancel it) and plan again before removing the shard")
        elif migration.source == shard_id:
            notes.append(f"migration {migration.id} is already moving {len(migration.arcs)} "
                         f"arcs from {shard_id} to {migration.target}")
    scale = model.scales(key_weight, ops_weight)

    def cost(arc: _Arc) -> float:
        return sum(weight * arc.value(dim) for dim, weight in scale.items())

    load = {r: sum(weight * model.load[dim][r] for dim, weight in scale.items())
            for r in receivers}
    arcs = sorted((a for a in model.arcs_of(source) if a.movable), key=lambda a: (-cost(a), a.end))
    weights = model.weights
    for arc in arcs:
        receiver = min(receivers, key=lambda r: (load[r] / weights[r], r))
        load[receiver] += cost(arc)
        model.move(arc, receiver)
    return model.plan("remove-node", topology, before, remove_after=shard_id, notes=notes)


def plan_rebalance(topology: Topology, arc_keys: Mapping[int, float] | None,
                   arc_ops: Mapping[int, float] | None = None, target: float = 1.10,
                   churn: float = 0.10, arc_bytes: Mapping[int, float] | None = None,
                   bytes_per_key: float | None = None) -> Plan:
    """Move arcs from the most to the least loaded shards until max/mean (keys, and separately
    ops/s; per unit of weight) is at most ``target``, moving at most ``churn`` of all keys.

    Each step takes the shard furthest over the target (in either dimension) as donor and the
    shard with the most room in that dimension as receiver, and moves the donor's arcs that
    help most per key moved. A move is taken only if it lowers the total squared excess over
    a goal halfway between the mean and the target (so estimates keep some slack), and never
    fills the receiver past that goal in the dimension being fixed; that lets a shard hot in
    ops but average in keys trade its hot arcs for a receiver's cold ones over a few steps.
    When every arc of the donor is too big (one hot arc), the biggest is cut at a hash
    midpoint, halving until a piece fits. ``arc_keys=None`` assumes keys spread evenly over
    the hash space (so it balances shares of the ring).
    """
    _require_ring(topology)
    if target < 1.0:
        raise ValueError("target is a max/mean ratio: it cannot be below 1.0")
    if not 0.0 <= churn <= 1.0:
        raise ValueError("churn is a fraction of the keys: 0.0 to 1.0")
    model = _Model(topology, arc_keys, arc_ops, arc_bytes, bytes_per_key)
    before = model.loads()
    balancer = _Balancer(model, target, churn)
    reached = balancer.run()
    return model.plan("rebalance", topology, before, reached=reached, target=target,
                      churn=churn)


class _Balancer:
    """plan_rebalance's search: greedy moves that lower the squared excess over the goal."""

    #: A split is tried down to pieces this many halvings below the arc.
    MAX_HALVINGS = 40

    def __init__(self, model: _Model, target: float, churn: float) -> None:
        self.model = model
        self.target = target
        self.goal = 1.0 + (target - 1.0) / 2
        self.dims = [d for d in DIMENSIONS if model.total[d] > 0]
        total_keys = model.total["keys"]
        self.budget = churn * total_keys if total_keys > 0 else float("inf")
        wsum = sum(model.weights)
        self.expected = {d: [model.total[d] * w / wsum for w in model.weights]
                         for d in self.dims}
        self.shards = range(len(model.weights))

    def ratio(self, dim: str, shard: int) -> float:
        return self.model.load[dim][shard] / self.expected[dim][shard]

    def excess(self, shard: int, change: Mapping[str, float] | None = None) -> float:
        """The shard's squared excess over the goal, after adding ``change`` to its loads."""
        total = 0.0
        for dim in self.dims:
            load = self.model.load[dim][shard] + (change.get(dim, 0.0) if change else 0.0)
            over = load / self.expected[dim][shard] - self.goal
            if over > 0:
                total += over * over
        return total

    def gain(self, donor: int, receiver: int, values: Mapping[str, float]) -> float:
        """How much moving ``values`` from donor to receiver lowers the total excess."""
        before = self.excess(donor) + self.excess(receiver)
        after = (self.excess(donor, {d: -v for d, v in values.items()})
                 + self.excess(receiver, values))
        return before - after

    def run(self) -> bool:
        if not self.dims:
            return True
        for _ in range(200 + 20 * len(self.shards)):
            worst = sorted(((self.ratio(d, i), d, i) for d in self.dims for i in self.shards
                            if self.ratio(d, i) > self.target),
                           key=lambda x: (-x[0], DIMENSIONS.index(x[1]), x[2]))
            if not worst:
                return True
            if not any(self.step(donor, dim) for _, dim, donor in worst):
                return False
        return all(self.ratio(d, i) <= self.target for d in self.dims for i in self.shards)

    def step(self, donor: int, dim: str) -> bool:
        receivers = sorted((r for r in self.shards if r != donor),
                           key=lambda r: (self.ratio(dim, r), r))
        return any(self.transfer(donor, receiver, dim) or self.split_one(donor, receiver, dim)
                   for receiver in receivers)

    def room(self, receiver: int, dim: str) -> float:
        return self.goal * self.expected[dim][receiver] - self.model.load[dim][receiver]

    def values(self, arc: _Arc, fraction: float = 1.0) -> dict[str, float]:
        return {d: arc.value(d) * fraction for d in self.dims}

    def transfer(self, donor: int, receiver: int, dim: str) -> bool:
        """Move whole arcs, best gain per key first, while each one still helps."""
        model = self.model
        candidates = []
        for arc in model.arcs_of(donor):
            if arc.movable and arc.value(dim) > 0:
                per_key = self.gain(donor, receiver, self.values(arc)) / max(arc.keys, 1e-12)
                candidates.append((-per_key, arc.end, arc))
        candidates.sort(key=lambda c: (c[0], c[1]))
        moved = 0
        for _, _, arc in candidates:
            if arc.keys > self.budget or arc.value(dim) > self.room(receiver, dim):
                continue
            if self.gain(donor, receiver, self.values(arc)) <= 1e-15:
                continue
            model.move(arc, receiver)
            self.budget -= arc.keys
            moved += 1
            if all(self.ratio(d, donor) <= self.goal for d in self.dims):
                break
        return moved > 0

    def split_one(self, donor: int, receiver: int, dim: str) -> bool:
        """Cut the donor's biggest arc that does not fit at the largest dyadic piece that fits
        and helps, and move that piece."""
        room = self.room(receiver, dim)
        if room <= 0 or self.budget <= 0:
            return False
        big = sorted((a for a in self.model.arcs_of(donor)
                      if a.movable and (a.value(dim) > room or a.keys > self.budget)),
                     key=lambda a: (-a.value(dim), a.end))
        for arc in big[:8]:
            for halvings in range(1, self.MAX_HALVINGS):
                length = arc.length >> halvings
                if length == 0:
                    break
                fraction = length / arc.length
                if arc.value(dim) * fraction > room or arc.keys * fraction > self.budget:
                    continue
                if self.gain(donor, receiver, self.values(arc, fraction)) <= 1e-15:
                    break  # smaller pieces only help less
                piece = self.model.split_at((arc.start + length) % self.model.space)
                self.model.move(piece, receiver)
                self.budget -= piece.keys
                return True
        return False


# --- the model the planners edit -------------------------------------------------------------


@dataclass
class _Arc:
    start: int
    end: int
    length: int
    owner: int                   # effective owner: a migrating arc counts for its target
    migration: int | None        # migration id when the arc is migrating (never moved)
    keys: float
    ops: float
    bytes: float
    moved: bool = False

    @property
    def movable(self) -> bool:
        return self.migration is None and not self.moved

    def value(self, dim: str) -> float:
        return self.keys if dim == "keys" else self.ops


class _Model:
    """Arcs with estimated keys/ops/bytes, split and moved in memory while planning."""

    def __init__(self, topology: Topology, arc_keys: Mapping[int, float] | None,
                 arc_ops: Mapping[int, float] | None, arc_bytes: Mapping[int, float] | None,
                 bytes_per_key: float | None) -> None:
        self.topology = topology
        self.space = topology.space
        self.keys_known = arc_keys is not None
        self.ops_known = arc_ops is not None
        self.bytes_known = arc_bytes is not None or bytes_per_key is not None
        keys = _attribute(topology, arc_keys)
        ops = _attribute(topology, arc_ops)
        sizes = _attribute(topology, arc_bytes)
        migrating = topology.migrating_arcs()
        self.arcs: dict[int, _Arc] = {}
        self.tokens: list[int] = list(topology.tokens)
        for start, end, owner in topology.arcs():
            length = (end - start) % self.space or self.space
            migration = migrating.get(end)
            if migration is not None:
                owner = topology.shard_index(migration.target)
            k = keys.get(end, 0.0) if self.keys_known else length / self.space
            if arc_bytes is not None:
                b = sizes.get(end, 0.0)
            else:
                b = k * bytes_per_key if (bytes_per_key and self.keys_known) else 0.0
            self.arcs[end] = _Arc(start, end, length, owner,
                                  migration.id if migration else None, k, ops.get(end, 0.0), b)
        self.weights = [shard.weight for shard in topology.shards]
        n = len(topology.shards)
        self.load: dict[str, list[float]] = {"keys": [0.0] * n, "ops": [0.0] * n}
        for arc in self.arcs.values():
            self.load["keys"][arc.owner] += arc.keys
            self.load["ops"][arc.owner] += arc.ops
        self.total = {dim: sum(values) for dim, values in self.load.items()}
        self.split_points: list[int] = []
        self.moves: dict[tuple[int, int], list[_Arc]] = {}

    def arc_containing(self, h: int) -> _Arc:
        i = bisect_left(self.tokens, h)
        return self.arcs[self.tokens[i if i < len(self.tokens) else 0]]

    def arcs_of(self, owner: int) -> list[_Arc]:
        return [arc for arc in self.arcs.values() if arc.owner == owner]

    def split_at(self, token: int) -> _Arc:
        """Cut the arc containing ``token`` there; returns the piece ending at ``token`` (the
        counts are divided in proportion to the hash range of each piece)."""
        arc = self.arc_containing(token)
        if arc.end == token:
            return arc
        piece_length = (token - arc.start) % self.space
        fraction = piece_length / arc.length
        piece = _Arc(arc.start, token, piece_length, arc.owner, arc.migration,
                     arc.keys * fraction, arc.ops * fraction, arc.bytes * fraction)
        arc.start = token
        arc.length -= piece_length
        arc.keys -= piece.keys
        arc.ops -= piece.ops
        arc.bytes -= piece.bytes
        self.arcs[token] = piece
        insort(self.tokens, token)
        self.split_points.append(token)
        return piece

    def move(self, arc: _Arc, target: int) -> None:
        source = arc.owner
        self.load["keys"][source] -= arc.keys
        self.load["ops"][source] -= arc.ops
        self.load["keys"][target] += arc.keys
        self.load["ops"][target] += arc.ops
        arc.owner = target
        arc.moved = True
        self.moves.setdefault((source, target), []).append(arc)

    def scales(self, key_weight: float, ops_weight: float) -> dict[str, float]:
        """Per-dimension multipliers that turn keys and ops into fractions of their totals."""
        out = {}
        if self.total["keys"] > 0:
            out["keys"] = key_weight / self.total["keys"]
        if self.total["ops"] > 0:
            out["ops"] = ops_weight / self.total["ops"]
        return out

    def loads(self) -> dict[str, ShardLoad]:
        shares = [0.0] * len(self.weights)
        for arc in self.arcs.values():
            shares[arc.owner] += arc.length / self.space
        return {shard.id: ShardLoad(self.load["keys"][i], self.load["ops"][i], shares[i],
                                    shard.weight)
                for i, shard in enumerate(self.topology.shards)}

    def plan(self, kind: str, base: Topology, before: dict[str, ShardLoad], *,
             added: Shard | None = None, remove_after: str | None = None,
             reached: bool = True, target: float | None = None, churn: float | None = None,
             notes: Iterable[str] = ()) -> Plan:
        prepared = self.topology.split(self.split_points)
        if prepared is not base:
            prepared = replace(prepared, epoch=base.epoch + 1)
        shards = self.topology.shards
        moves = []
        for (source, target_index), arcs in sorted(self.moves.items()):
            moves.append(PlannedMove(
                arcs=tuple(sorted(arc.end for arc in arcs)),
                source=shards[source].id, target=shards[target_index].id,
                keys=round(sum(a.keys for a in arcs)) if self.keys_known else 0,
                bytes_estimate=round(sum(a.bytes for a in arcs)),
                ops=sum(a.ops for a in arcs),
                share=sum(a.length for a in arcs) / self.space))
        return Plan(kind=kind, base=base, topology=prepared, moves=tuple(moves),
                    load_before=before, load_after=self.loads(),
                    split_points=tuple(sorted(self.split_points)), added_shard=added,
                    remove_after=remove_after, reached_target=reached, target=target,
                    churn=churn, keys_known=self.keys_known, bytes_known=self.bytes_known,
                    ops_known=self.ops_known, notes=tuple(notes))


# --- helpers ---------------------------------------------------------------------------------


def _ids(topology: Topology) -> set[str]:
    return {shard.id for shard in topology.shards}


def _require_ring(topology: Topology) -> None:
    if not topology.is_ring:
        raise TopologyError("distribution 'modula' has no arcs to move: nothing can be planned")


def _attribute(topology: Topology, measured: Mapping[int, float] | None) -> dict[int, float]:
    """Measured per-arc values credited to this topology's arcs (a token no longer on the
    ring goes to the arc containing it)."""
    out: dict[int, float] = {}
    if not measured:
        return out
    for token in sorted(measured):
        end = topology.arc_containing(token)
        out[end] = out.get(end, 0.0) + float(measured[token])
    return out


def _mean_per_weight(loads: Mapping[str, ShardLoad], dimension: str) -> float:
    total_weight = sum(load.weight for load in loads.values())
    return sum(getattr(load, dimension) for load in loads.values()) / total_weight


def _imbalance(loads: Mapping[str, ShardLoad], dimension: str) -> float:
    mean = _mean_per_weight(loads, dimension)
    if mean <= 0:
        return 1.0
    return max(getattr(load, dimension) / load.weight for load in loads.values()) / mean


def _ratio(value: float, expected: float) -> str:
    return f"{value / expected:.2f}" if expected > 0 else "-"


def _human_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _table(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.rjust(widths[c]) if c in right else cell.ljust(widths[c])
                 for c, cell in enumerate(row)]
        out.append("  ".join(cells).rstrip())
    return out
