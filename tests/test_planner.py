"""The planner: add-node takes its share and no more, remove-node spreads the drained arcs,
rebalance reaches its target within the churn budget, and migrating arcs are never touched."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rebalancer.planner import Plan, plan_add_node, plan_rebalance, plan_remove_node
from rebalancer.topology import Shard, Topology, TopologyError
from router.config import from_node_list
from router.nodes import NodeSpec
from router.ring import build_vnode_ring

KEYS = [b"user:%d" % i for i in range(20000)]


def nodes(n: int) -> str:
    return ",".join(f"10.0.0.{i}:6379" for i in range(1, n + 1))


def make(n: int, **settings) -> Topology:
    return Topology.from_config(from_node_list(nodes(n), **settings))


def hashes(topology: Topology, keys=KEYS) -> list[int]:
    h = topology.placement().hash
    return [h(k) for k in keys]


def count_arcs(topology: Topology, key_hashes: list[int]) -> dict[int, int]:
    """Per-arc key counts, as the proxy's sampler would report them."""
    return dict(Counter(topology.arc_containing(h) for h in key_hashes))


def finish_all(topology: Topology) -> Topology:
    for migration in topology.migrations:
        topology = topology.finish_migration(migration.id)
    return topology


def owners_by_id(topology: Topology, key_hashes: list[int]) -> list[str]:
    lookup = topology.placement().distribution.lookup
    return [topology.shards[lookup(h)].id for h in key_hashes]


def key_loads(topology: Topology, key_hashes: list[int]) -> Counter:
    loads = Counter({s.id: 0 for s in topology.shards})
    loads.update(owners_by_id(topology, key_hashes))
    return loads


def max_over_mean(loads: Counter, exclude: str | None = None) -> float:
    values = [v for k, v in loads.items() if k != exclude]
    return max(values) / (sum(values) / len(values))


# --- add-node --------------------------------------------------------------------------------


@settings(max_examples=4, deadline=None)
@given(st.integers(min_value=2, max_value=7))
def test_add_node_moves_its_share_from_every_other_shard(n):
    topology = make(n)
    key_hashes = hashes(topology)
    new = Shard("10.0.0.99:6379", NodeSpec("10.0.0.99", 6379))
    plan = plan_add_node(topology, new, arc_keys=count_arcs(topology, key_hashes))
    assert plan.added_shard == new and plan.topology.epoch == topology.epoch + 1
    started, migrations = plan.apply()
    assert started.epoch == topology.epoch + 1
    assert {m.target for m in migrations} == {new.id}
    assert {m.source for m in migrations} == {s.id for s in topology.shards}  # every other
    after = finish_all(started)

    before_ids, after_ids = owners_by_id(topology, key_hashes), owners_by_id(after, key_hashes)
    moved = [(b, a) for b, a in zip(before_ids, after_ids, strict=True) if b != a]
    assert all(a == new.id for _, a in moved)  # keys only move to the new shard
    fraction = len(moved) / len(KEYS)
    assert abs(fraction - 1 / (n + 1)) <= 0.10 / (n + 1)
    sources = Counter(b for b, _ in moved)
    assert set(sources) == {s.id for s in topology.shards}
    for count in sources.values():  # each gives about its fair part
        assert abs(count - len(moved) / n) <= 0.35 * len(moved) / n
    # The plan's estimate agrees with what really moved.
    assert abs(plan.keys_moved - len(moved)) <= 0.02 * len(KEYS)

    # Exactly where a restart with the longer node list would have put every key.
    ring = build_vnode_ring([s.id for s in after.shards], [1] * (n + 1))
    assert [after.shards[ring.lookup(h)].id for h in key_hashes] == after_ids


def test_add_node_to_a_ketama_topology():
    topology = make(4, distribution="ketama", hash="fnv1a_64")
    key_hashes = hashes(topology)
    new = Shard("extra", NodeSpec("10.0.0.50", 6379))
    plan = plan_add_node(topology, new)
    assert not plan.keys_known and len(plan.split_points) == 160
    after = finish_all(plan.apply()[0])
    moved = sum(a != b for a, b in zip(owners_by_id(topology, key_hashes),
                                       owners_by_id(after, key_hashes), strict=True))
    assert abs(moved / len(KEYS) - 1 / 5) <= 0.3 / 5
    assert abs(plan.share_moved - after.ownership_fractions()["extra"]) < 1e-9


def test_add_node_weight_scales_its_share():
    topology = make(3)
    plan = plan_add_node(topology, Shard("big", NodeSpec("10.0.0.9", 1), weight=3))
    assert abs(plan.share_moved - 0.5) < 0.03  # weight 3 of 6


def test_add_node_accepts_a_shard_already_added():
    topology = make(3, points_per_node=256)
    new = Shard("n", NodeSpec("10.0.0.9", 1))
    added = topology.add_shard(new)
    plan = plan_add_node(added, new)
    assert plan.added_shard is None
    started, _ = plan.apply()
    assert started.epoch == added.epoch + 1
    with pytest.raises(TopologyError, match="already owns"):
        plan_add_node(finish_all(started), new)


# --- remove-node -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
def test_remove_node_drains_every_arc_and_spreads_the_load(n):
    topology = make(n)
    key_hashes = hashes(topology)
    arc_keys = count_arcs(topology, key_hashes)
    arc_ops = {end: 10.0 * keys for end, keys in arc_keys.items()}
    victim = topology.shards[1].id
    plan = plan_remove_node(topology, victim, arc_keys, arc_ops, bytes_per_key=100)
    assert plan.remove_after == victim
    assert {m.source for m in plan.moves} == {victim}
    assert sorted(a for m in plan.moves for a in m.arcs) == [e for _, e, _ in topology.arcs_of(victim)]
    assert plan.keys_moved == sum(arc_keys.get(e, 0) for _, e, _ in topology.arcs_of(victim))
    assert plan.bytes_moved == 100 * plan.keys_moved
    after = finish_all(plan.apply()[0])
    assert after.arcs_of(victim) == []
    removed = after.remove_shard(victim)
    loads = key_loads(removed, key_hashes)
    assert max_over_mean(loads) <= 1.25
    assert plan.imbalance("keys") <= 1.25 and plan.imbalance("ops") <= 1.25
    # Only the victim's keys moved.
    for b, a in zip(owners_by_id(topology, key_hashes), owners_by_id(removed, key_hashes),
                    strict=True):
        assert a == b or b == victim


def test_remove_the_only_shard_is_refused():
    with pytest.raises(TopologyError, match="only shard"):
        plan_remove_node(make(1, points_per_node=8), "10.0.0.1:6379")


# --- rebalance -------------------------------------------------------------------------------


def skewed(topology: Topology, heavy: int, factor: float) -> dict[int, float]:
    """Uniform keys, except the arcs of shard ``heavy`` hold ``factor`` times as many."""
    arc_keys = count_arcs(topology, hashes(topology))
    return {end: keys * (factor if topology.owner_of(end) == heavy else 1.0)
            for end, keys in arc_keys.items()}


def estimated_loads(topology: Topology, arc_keys: dict[int, float]) -> Counter:
    """Key load per shard once every migration finished, arcs split proportionally."""
    loads = Counter({s.id: 0.0 for s in topology.shards})
    for end, keys in arc_keys.items():
        loads[topology.shards[topology.owner_of(end)].id] += keys
    return loads


def test_rebalance_reaches_the_target_within_the_churn_budget():
    topology = make(4)
    arc_keys = skewed(topology, heavy=0, factor=1.5)
    total = sum(arc_keys.values())
    plan = plan_rebalance(topology, arc_keys, None, target=1.10, churn=0.10)
    assert plan.reached_target
    assert plan.imbalance("keys", after=False) > 1.2
    assert plan.imbalance("keys") <= 1.10
    assert plan.keys_moved <= 0.10 * total + 1
    assert {m.source for m in plan.moves} == {topology.shards[0].id}
    # Check the estimate against the real keys: weight each real key by its arc's skew.
    after = finish_all(plan.apply()[0])
    weight = {end: (1.5 if topology.owner_of(end) == 0 else 1.0) for end in topology.tokens}
    loads = Counter()
    for h, shard in zip(hashes(topology), owners_by_id(after, hashes(topology)), strict=True):
        loads[shard] += weight[topology.arc_containing(h)]
    assert max_over_mean(loads) <= 1.10 + 0.03


def test_rebalance_splits_a_hot_arc():
    topology = make(4, points_per_node=64)
    arc_keys = {end: 10.0 for end in topology.tokens}
    hot = topology.tokens[10]
    arc_keys[hot] = 10.0 * len(topology.tokens)  # one arc holds half of all keys
    plan = plan_rebalance(topology, arc_keys, None, target=1.10, churn=1.0)
    assert plan.reached_target and plan.split_points
    assert plan.imbalance("keys") <= 1.10
    for point in plan.split_points:  # split points cut the hot arc at dyadic fractions
        assert plan.topology.arc_containing(point) == point
    started, _ = plan.apply()
    assert started.epoch == topology.epoch + 1
    assert all(t in started.tokens for t in plan.split_points)


def test_rebalance_respects_a_small_churn_budget():
    topology = make(4)
    arc_keys = skewed(topology, heavy=2, factor=3.0)
    total = sum(arc_keys.values())
    plan = plan_rebalance(topology, arc_keys, None, target=1.10, churn=0.02)
    assert not plan.reached_target
    assert 0 < plan.keys_moved <= 0.02 * total + 1
    assert plan.imbalance("keys") < plan.imbalance("keys", after=False)
    assert "NOT reached" in plan.describe()


def test_rebalance_balances_ops_separately():
    topology = make(4)
    arc_keys = count_arcs(topology, hashes(topology))
    arc_ops = {end: keys * (4.0 if topology.owner_of(end) == 3 else 1.0)
               for end, keys in arc_keys.items()}
    plan = plan_rebalance(topology, arc_keys, arc_ops, target=1.10, churn=0.5)
    assert plan.reached_target
    assert plan.imbalance("ops", after=False) > 2
    assert plan.imbalance("ops") <= 1.10 and plan.imbalance("keys") <= 1.10


def test_a_balanced_cluster_needs_no_moves():
    topology = make(4)
    plan = plan_rebalance(topology, count_arcs(topology, hashes(topology)), None)
    assert plan.reached_target and plan.moves == () and plan.topology is topology
    assert plan.apply() == (topology, [])
    assert "nothing to move" in plan.describe()


# --- migrating arcs are never planned --------------------------------------------------------


def test_no_plan_moves_or_splits_a_migrating_arc():
    topology = make(4, points_per_node=512)
    moving = [end for _, end, owner in topology.arcs() if owner == 0][::2]
    topology, migrations = topology.start_migration(moving, topology.shards[1].id)
    busy = set(moving)
    arc_keys = {end: 1000.0 if end in busy else 1.0 for end in topology.tokens}
    arc_ops = {end: 50.0 if end in busy else 1.0 for end in topology.tokens}
    plans = [
        plan_rebalance(topology, arc_keys, arc_ops, churn=1.0),
        plan_remove_node(topology, topology.shards[0].id, arc_keys, arc_ops),
        plan_remove_node(topology, topology.shards[1].id, arc_keys, arc_ops),
        plan_add_node(topology, Shard("x", NodeSpec("10.9.9.9", 1)), arc_keys=arc_keys),
    ]
    for plan in plans:
        assert plan.moves
        for move in plan.moves:
            assert not busy & set(move.arcs)
        for point in plan.split_points:
            assert topology.arc_containing(point) not in busy
        started, _ = plan.apply()  # start_migrations would refuse a migrating arc
        assert {m.id for m in migrations} <= {m.id for m in started.migrations}
    assert any("migrating" in note for note in plans[3].notes)
    assert any("already moving" in note for note in plans[1].notes)
    assert any("still moving arcs to" in note for note in plans[2].notes)


# --- plans as values -------------------------------------------------------------------------


def test_plans_are_deterministic():
    topology = make(5, points_per_node=512)
    arc_keys = skewed(topology, heavy=3, factor=2.0)
    a = plan_rebalance(topology, arc_keys, None, churn=0.3)
    b = plan_rebalance(topology, dict(reversed(list(arc_keys.items()))), None, churn=0.3)
    assert a.moves == b.moves and a.split_points == b.split_points


def test_a_stale_plan_is_refused():
    topology = make(3, points_per_node=64)
    plan = plan_remove_node(topology, topology.shards[0].id)
    first = plan.moves[0]
    changed, _ = topology.start_migration(first.arcs[:1], topology.shards[2].id
                                          if first.target != topology.shards[2].id
                                          else topology.shards[1].id)
    with pytest.raises(TopologyError, match="stale plan"):
        plan.apply(changed)


def test_describe_and_json():
    topology = make(3, points_per_node=128)
    arc_keys = count_arcs(topology, hashes(topology))
    plan = plan_remove_node(topology, topology.shards[2].id, arc_keys,
                            {e: 2.0 for e in arc_keys}, arc_bytes={e: 1e6 for e in arc_keys})
    text = plan.describe()
    assert "10.0.0.3:6379  ->  10.0.0.1:6379" in text
    assert "expected load after" in text and "(removed)" in text
    assert "MB" in text and "then remove shard 10.0.0.3:6379" in text
    data = json.loads(json.dumps(plan.to_json_dict()))
    assert data["kind"] == "remove-node" and data["keys_moved"] == plan.keys_moved
    assert isinstance(plan, Plan)
    small_plan = plan_rebalance(make(2, points_per_node=2), {}, None)
    assert "rebalance" in small_plan.describe()


def test_modula_cannot_be_planned():
    topology = Topology.from_config(from_node_list(nodes(3), distribution="modula",
                                                   hash="fnv1a_64"))
    with pytest.raises(TopologyError, match="modula"):
        plan_rebalance(topology, {}, None)
    with pytest.raises(TopologyError, match="modula"):
        plan_add_node(topology, Shard("x", NodeSpec("x", 1)))
