"""The topology value: same placement as the proxy, edits that keep or move exactly what they
say, migration codes, and serialization."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rebalancer.topology import (
    HASH_SPACE_32,
    HASH_SPACE_64,
    Migration,
    Shard,
    Topology,
    TopologyError,
    _dedupe,
    vnode_point_count,
    vnode_tokens,
)
from router.config import ConfigError, from_node_list
from router.nodes import NodeSpec
from router.ring import Ring, VnodeLayout, build_vnode_ring

KEYS = [b"key:%d" % i for i in range(3000)] + [b"{user:%d}:name" % i for i in range(500)]

node_lists = st.lists(st.integers(min_value=1, max_value=250), min_size=1, max_size=6,
                      unique=True).map(lambda xs: ",".join(f"10.0.0.{x}:6379" for x in xs))


def small(nodes: str = "10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379", **settings) -> Topology:
    settings.setdefault("points_per_node", 32)
    return Topology.from_config(from_node_list(nodes, **settings))


def shard_ids(topology: Topology, keys=KEYS) -> list[str]:
    """Where each key goes, by shard id (indices shift when shards are removed)."""
    index = topology.placement().node_index
    out = []
    for key in keys:
        code = index(key)
        out.append(topology.shards[code].id if code >= 0
                   else f"migrating:{topology.migration_of(code).id}")
    return out


def boundary_hashes(topology: Topology) -> list[int]:
    """Hashes right at, before and after every token, and the ends of the space."""
    out = [0, topology.space - 1]
    for token in topology.tokens:
        out += [token, max(0, token - 1), min(topology.space - 1, token + 1)]
    return out


# --- vnode tokens ----------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=5),
       st.integers(min_value=1, max_value=64))
def test_vnode_tokens_are_the_ones_build_vnode_ring_places(weights, points):
    labels = [f"node-{i}" for i in range(len(weights))]
    ring = build_vnode_ring(labels, weights, VnodeLayout(points))
    mean = sum(weights) / len(weights)
    for index, (label, weight) in enumerate(zip(labels, weights, strict=True)):
        owned = sorted(t for t, o in zip(ring.tokens, ring.owners, strict=True) if o == index)
        assert vnode_tokens(label, vnode_point_count(weight, mean, points)) == owned


def test_topology_vnode_tokens_match_the_ring_for_equal_weights():
    topology = small()
    for i, shard in enumerate(topology.shards):
        owned = [t for t, o in zip(topology.tokens, topology.owners, strict=True) if o == i]
        assert topology.vnode_tokens(shard) == owned


def test_vnode_tokens_on_a_32_bit_ring_are_the_top_bits():
    assert vnode_tokens("a", 8, HASH_SPACE_32) == sorted(t >> 32 for t in vnode_tokens("a", 8))
    assert max(vnode_tokens("a", 100, HASH_SPACE_32)) < HASH_SPACE_32


# --- the same placement as the proxy ---------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(node_lists, st.sampled_from(["vnodes", "ketama", "modula"]),
       st.sampled_from(["xxh3", "fnv1a_64", "md5", "murmur"]))
def test_placement_equals_the_proxy_placement(nodes, distribution, hash_name):
    if (distribution == "vnodes") != (hash_name == "xxh3"):
        hash_name = "xxh3" if distribution == "vnodes" else "fnv1a_64"
    config = from_node_list(nodes, distribution=distribution, hash=hash_name, points_per_node=64)
    topology = Topology.from_config(config)
    proxy = config.placement().node_index
    mine = topology.placement().node_index
    assert [mine(k) for k in KEYS] == [proxy(k) for k in KEYS]
    assert topology.epoch == 1
    assert [s.id for s in topology.shards] == [n.label for n in config.nodes]
    if distribution != "modula":
        ring = config.placement().distribution
        for h in boundary_hashes(topology):
            assert topology.placement().distribution.lookup(h) == ring.lookup(h)


def test_default_vnode_topology_matches_the_proxy_on_many_keys():
    config = from_node_list("a:1,b:2,c:3:2,d:4 named")
    topology = Topology.from_config(config)
    keys = [b"k%d" % i for i in range(20000)]
    proxy, mine = config.placement().node_index, topology.placement().node_index
    assert all(proxy(k) == mine(k) for k in keys)
    assert topology.shards[3].id == "named"
    assert topology.points_per_node == 4096 and topology.space == HASH_SPACE_64


def test_equal_tokens_keep_the_first_like_bisect():
    ring = Ring([5, 9, 9, 9, 20], [0, 1, 2, 0, 2])
    tokens, owners = _dedupe(ring.tokens, ring.owners)
    assert tokens == (5, 9, 20) and owners == (0, 1, 2)
    deduped = Ring(tokens, owners)
    assert all(deduped.lookup(h) == ring.lookup(h) for h in range(0, 30))


def test_ketama_topology_is_32_bit():
    topology = small(distribution="ketama", hash="fnv1a_64")
    assert topology.space == HASH_SPACE_32 and topology.points_per_node == 160
    assert topology.tokens[-1] < HASH_SPACE_32


# --- queries ---------------------------------------------------------------------------------


def test_arcs_cover_the_hash_space_once():
    topology = small()
    arcs = topology.arcs()
    assert sum(topology.arc_length(end) for _, end, _ in arcs) == topology.space
    assert arcs[0][0] == topology.tokens[-1]  # the first arc wraps
    assert abs(sum(topology.ownership_fractions().values()) - 1.0) < 1e-9
    for start, end, owner in arcs:
        assert topology.arc_containing(end) == end
        assert topology.arc_containing((start + 1) % topology.space) == end
        assert topology.arc_start(end) == start and topology.owner_of(end) == owner
    assert topology.arc_containing(topology.space - 1) == topology.tokens[0]
    shard = topology.shards[1]
    assert {a[2] for a in topology.arcs_of(shard.id)} == {1}
    assert len(topology.arcs_of(shard.id)) == topology.owners.count(1)


def test_shard_index_and_unknown_shard():
    topology = small()
    assert topology.shard_index("10.0.0.2:6379") == 1
    with pytest.raises(TopologyError, match="no shard"):
        topology.shard_index("nope:1")


def test_shard_from_node_carries_replicas_and_sentinel():
    replica = NodeSpec("10.0.1.1", 6380)
    node = NodeSpec("10.0.0.1", 6379, weight=2, name="s1", password="pw", replicas=(replica,),
                    sentinel_master="m1")
    shard = Shard.from_node(node)
    assert shard.id == "s1" and shard.weight == 2 and shard.replicas == (replica,)
    assert shard.sentinel_master == "m1" and shard.primary.replicas == ()
    assert shard.node() == node


# --- edits -----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=HASH_SPACE_64 - 1), max_size=40),
       st.booleans())
def test_split_never_changes_placement(points, migrating):
    topology = small()
    if migrating:
        topology, _ = _migrate_some(topology)
    split = topology.split(points)
    assert shard_ids(split) == shard_ids(topology)
    lookup_before = topology.placement().distribution.lookup
    lookup_after = split.placement().distribution.lookup
    for h in boundary_hashes(split) + points:
        assert lookup_after(h) == lookup_before(h)
    new = set(points) - set(topology.tokens)
    assert split.epoch == topology.epoch + (1 if new else 0)
    assert set(split.tokens) == set(topology.tokens) | new
    assert sum(len(m.arcs) for m in split.migrations) >= sum(len(m.arcs) for m in topology.migrations)


def _migrate_some(topology: Topology) -> tuple[Topology, list[Migration]]:
    target = topology.shards[0].id
    arcs = [end for _, end, owner in topology.arcs() if owner != 0][::3]
    return topology.start_migration(arcs, target)


def test_split_is_refused_outside_the_space():
    with pytest.raises(TopologyError, match="split points"):
        small().split([HASH_SPACE_64])


def test_start_and_finish_migration_move_exactly_those_arcs():
    topology = small()
    rng = random.Random(7)
    target = "10.0.0.3:6379"
    candidates = [end for _, end, owner in topology.arcs() if owner != 2]
    arcs = sorted(rng.sample(candidates, 10))
    started, migrations = topology.start_migration(arcs, target)
    assert started.epoch == topology.epoch + 1
    assert {m.source for m in migrations} <= {"10.0.0.1:6379", "10.0.0.2:6379"}
    assert sorted(a for m in migrations for a in m.arcs) == arcs
    assert all(m.target == target for m in migrations)
    assert [m.id for m in migrations] == list(range(1, len(migrations) + 1))
    assert started.next_migration_id == len(migrations) + 1
    assert started.owners == topology.owners  # nothing changes owner while keys move

    index = started.placement().node_index
    moving = set(arcs)
    for key in KEYS:
        end = topology.arc_containing(topology.placement().hash(_tagged(key)))
        code = index(key)
        if end in moving:
            assert code < 0
            migration = started.migration_of(code)
            assert end in migration.arcs and migration.target == target
            assert migration.source == topology.shards[topology.owner_of(end)].id
        else:
            assert code == topology.placement().node_index(key)

    finished = started
    for migration in migrations:
        finished = finished.finish_migration(migration.id)
    assert finished.migrations == () and finished.epoch == started.epoch + len(migrations)
    before, after = shard_ids(topology), shard_ids(finished)
    for key, was, now in zip(KEYS, before, after, strict=True):
        end = topology.arc_containing(topology.placement().hash(_tagged(key)))
        assert now == (target if end in moving else was)


def _tagged(key: bytes) -> bytes:
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def test_migration_codes_follow_the_migration_order():
    topology = small()
    a = [end for _, end, owner in topology.arcs() if owner == 0][:2]
    b = [end for _, end, owner in topology.arcs() if owner == 1][:2]
    topology, first = topology.start_migration(a, "10.0.0.3:6379")
    topology, second = topology.start_migration(b, "10.0.0.1:6379")
    lookup = topology.placement().distribution.lookup
    assert lookup(a[0]) == -1 and lookup(b[1]) == -2
    assert topology.migration_of(-1) == first[0] and topology.migration_of(-2) == second[0]
    topology = topology.finish_migration(first[0].id)
    lookup = topology.placement().distribution.lookup
    assert lookup(a[0]) == 2 and lookup(b[0]) == -1  # codes are indices into migrations
    with pytest.raises(TopologyError):
        topology.migration_of(-2)
    with pytest.raises(TopologyError):
        topology.migration_of(0)


def test_start_migrations_groups_by_source_in_one_epoch():
    topology = small()
    arcs0 = [end for _, end, owner in topology.arcs() if owner == 0][:3]
    arcs1 = [end for _, end, owner in topology.arcs() if owner == 1][:3]
    arcs2 = [end for _, end, owner in topology.arcs() if owner == 2][:1]
    started, migrations = topology.start_migrations(
        [(arcs0 + arcs1, "10.0.0.3:6379"), (arcs2, "10.0.0.1:6379")])
    assert started.epoch == topology.epoch + 1
    assert [(m.source, m.target, len(m.arcs)) for m in migrations] == [
        ("10.0.0.1:6379", "10.0.0.3:6379", 3), ("10.0.0.2:6379", "10.0.0.3:6379", 3),
        ("10.0.0.3:6379", "10.0.0.1:6379", 1)]


def test_start_migration_refusals():
    topology = small()
    mine = [end for _, end, owner in topology.arcs() if owner == 0]
    with pytest.raises(TopologyError, match="no arc ends"):
        topology.start_migration([mine[0] + 1], "10.0.0.2:6379")
    with pytest.raises(TopologyError, match="already owned"):
        topology.start_migration(mine[:2], "10.0.0.1:6379")
    with pytest.raises(TopologyError, match="no shard"):
        topology.start_migration(mine[:2], "nowhere:1")
    with pytest.raises(TopologyError, match="at least one arc"):
        topology.start_migration([], "10.0.0.2:6379")
    started, _ = topology.start_migration(mine[:2], "10.0.0.2:6379")
    with pytest.raises(TopologyError, match="already migrating"):
        started.start_migration(mine[1:3], "10.0.0.3:6379")
    with pytest.raises(TopologyError, match="no migration"):
        started.finish_migration(99)


def test_cancel_migration_keeps_owners():
    topology = small()
    mine = [end for _, end, owner in topology.arcs() if owner == 0][:4]
    started, (migration,) = topology.start_migration(mine, "10.0.0.2:6379")
    cancelled = started.cancel_migration(migration.id)
    assert cancelled.migrations == () and cancelled.owners == topology.owners
    assert cancelled.epoch == topology.epoch + 2
    assert shard_ids(cancelled) == shard_ids(topology)
    assert cancelled.next_migration_id == 2  # ids are never reused


def test_edits_never_mutate():
    topology = small()
    frozen = topology.to_bytes()
    topology.split([12345])
    topology.start_migration([topology.tokens[0]], "10.0.0.3:6379"
                             if topology.owners[0] != 2 else "10.0.0.1:6379")
    topology.add_shard(Shard("x", NodeSpec("10.0.0.9", 1)))
    topology.merge_adjacent()
    assert topology.to_bytes() == frozen


def test_add_and_remove_shard_remaps_owner_indices():
    topology = small("10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379,10.0.0.4:6379")
    added = topology.add_shard(Shard("new", NodeSpec("10.0.0.5", 6379)))
    assert added.shards[-1].id == "new" and 4 not in added.owners
    with pytest.raises(TopologyError, match="already exists"):
        added.add_shard(Shard("new", NodeSpec("10.0.0.6", 6379)))
    with pytest.raises(TopologyError, match="already has primary"):
        added.add_shard(Shard("other", NodeSpec("10.0.0.5", 6379)))
    with pytest.raises(TopologyError, match="still owns"):
        added.remove_shard("10.0.0.2:6379")

    # Drain shard 1 to shard 0, then remove it: every key keeps its shard id except the
    # drained ones, and owners above index 1 shift down.
    drained = [end for _, end, owner in added.arcs() if owner == 1]
    started, (migration,) = added.start_migration(drained, "10.0.0.1:6379")
    receiving, _ = added.start_migration(drained[:1], "new")
    with pytest.raises(TopologyError, match="in migration"):
        receiving.remove_shard("new")  # owns nothing yet, but arcs are moving to it
    finished = started.finish_migration(migration.id)
    removed = finished.remove_shard("10.0.0.2:6379")
    assert [s.id for s in removed.shards] == ["10.0.0.1:6379", "10.0.0.3:6379",
                                              "10.0.0.4:6379", "new"]
    assert max(removed.owners) == 2
    before = shard_ids(added)
    after = shard_ids(removed)
    assert after == [("10.0.0.1:6379" if b == "10.0.0.2:6379" else b) for b in before]
    with pytest.raises(TopologyError, match="no shard"):
        removed.remove_shard("10.0.0.2:6379")


def test_merge_adjacent_keeps_placement_and_shrinks_the_ring():
    topology = small()
    drained = [end for _, end, owner in topology.arcs() if owner == 1]
    started, (migration,) = topology.start_migration(drained, "10.0.0.1:6379")
    keep_moving = [end for _, end, owner in started.arcs() if owner == 2][:5]
    started, _ = started.start_migration(keep_moving, "10.0.0.1:6379")
    finished = started.finish_migration(migration.id)
    merged = finished.merge_adjacent()
    assert len(merged.tokens) < len(finished.tokens)
    assert shard_ids(merged) == shard_ids(finished)
    lookup_a = finished.placement().distribution.lookup
    lookup_b = merged.placement().distribution.lookup
    for h in boundary_hashes(finished):
        assert lookup_a(h) == lookup_b(h)
    assert set(keep_moving) <= set(merged.tokens)
    # Adjacent arcs of one owner are all merged, except migrating ones.
    migrating = set(merged.migrating_arcs())
    owners, tokens = merged.owners, merged.tokens
    for i in range(len(tokens)):
        j = (i + 1) % len(tokens)
        assert owners[i] != owners[j] or tokens[i] in migrating or tokens[j] in migrating
    assert merged.merge_adjacent() is merged


def test_merge_of_a_single_owner_ring_keeps_one_token():
    topology = small("10.0.0.1:6379")
    merged = topology.merge_adjacent()
    assert len(merged.tokens) == 1 and shard_ids(merged) == shard_ids(topology)


def test_modula_serves_but_refuses_edits():
    config = from_node_list("a:1,b:2:2,c:3", distribution="modula", hash="fnv1a_64")
    topology = Topology.from_config(config)
    assert [topology.placement().node_index(k) for k in KEYS] == [
        config.placement().node_index(k) for k in KEYS]
    assert abs(topology.ownership_fractions()["b:2"] - 0.5) < 1e-9
    for edit in (lambda t: t.split([1]), lambda t: t.start_migration([1], "a:1"),
                 lambda t: t.add_shard(Shard("d", NodeSpec("d", 4))),
                 lambda t: t.remove_shard("a:1"), lambda t: t.merge_adjacent(), lambda t: t.arcs()):
        with pytest.raises(TopologyError, match="modula"):
            edit(topology)
    assert Topology.from_bytes(topology.to_bytes()) == topology


def test_invalid_values_are_refused():
    topology = small()
    with pytest.raises(TopologyError, match="strictly increasing"):
        Topology(1, topology.shards, (5, 5), (0, 1))
    with pytest.raises(TopologyError, match="out of range"):
        Topology(1, topology.shards, (5, 6), (0, 7))
    with pytest.raises(TopologyError, match="not owned by its source"):
        Topology(1, topology.shards, (5, 6), (0, 1), next_migration_id=2,
                 migrations=(Migration(1, topology.shards[1].id, topology.shards[2].id, (5,)),))
    with pytest.raises(TopologyError, match="0..2"):
        Topology(1, topology.shards, (HASH_SPACE_32,), (0,), hash="md5", distribution="ketama")


# --- serialization ---------------------------------------------------------------------------


@st.composite
def topologies(draw) -> Topology:
    """A topology after a random sequence of edits."""
    nodes = draw(node_lists)
    distribution = draw(st.sampled_from(["vnodes", "ketama"]))
    hash_name = "xxh3" if distribution == "vnodes" else "md5"
    tag = draw(st.sampled_from(["{}", None, "[]"]))
    topology = small(nodes, distribution=distribution, hash=hash_name, hash_tag=tag)
    rng = random.Random(draw(st.integers(0, 2**32)))
    for step in draw(st.lists(st.sampled_from(["split", "migrate", "finish", "cancel", "add",
                                               "merge"]), max_size=6)):
        if step == "split":
            topology = topology.split(rng.randrange(topology.space) for _ in range(5))
        elif step == "migrate" and len(topology.shards) > 1:
            target = rng.randrange(len(topology.shards))
            busy = set(topology.migrating_arcs())
            arcs = [end for _, end, owner in topology.arcs() if owner != target and end not in busy]
            if arcs:
                topology, _ = topology.start_migration(rng.sample(arcs, min(3, len(arcs))),
                                                       topology.shards[target].id)
        elif step in ("finish", "cancel") and topology.migrations:
            migration = rng.choice(topology.migrations)
            topology = (topology.finish_migration(migration.id) if step == "finish"
                        else topology.cancel_migration(migration.id))
        elif step == "add":
            n = len(topology.shards)
            topology = topology.add_shard(Shard(
                f"extra-{n}", NodeSpec(f"10.1.0.{n}", 7000, password="secret"),
                replicas=(NodeSpec(f"10.2.0.{n}", 7001),), weight=rng.randint(1, 3),
                sentinel_master=rng.choice([None, "mymaster"])))
        elif step == "merge":
            topology = topology.merge_adjacent()
    return topology


@settings(max_examples=40, deadline=None)
@given(topologies())
def test_serialization_round_trip(topology):
    data = topology.to_bytes()
    again = Topology.from_bytes(data)
    assert again == topology
    assert shard_ids(again) == shard_ids(topology)
    full = json.loads(json.dumps(topology.to_json_dict(redact=False)))
    assert Topology.from_json_dict(full) == topology


def test_bytes_are_compact():
    topology = Topology.from_config(from_node_list("a:1,b:2,c:3"))
    assert len(topology.to_bytes()) < len(topology.tokens) * 13


def test_json_view_redacts_passwords_and_summarizes():
    topology = small().add_shard(Shard("s", NodeSpec("h", 1, password="hunter2")))
    view = topology.to_json_dict(ring=False)
    text = json.dumps(view)
    assert "hunter2" not in text and "tokens" not in view
    assert view["shards"][0]["arcs"] == topology.owners.count(0)
    assert view["epoch"] == topology.epoch
    with pytest.raises(TopologyError):
        Topology.from_json_dict(view)


def test_from_bytes_refuses_garbage_and_other_versions():
    import msgpack

    with pytest.raises(TopologyError):
        Topology.from_bytes(b"\xc1not msgpack")
    with pytest.raises(TopologyError, match="version"):
        Topology.from_bytes(msgpack.packb({"v": 99}))


@pytest.mark.parametrize(("distribution", "hash_name"), [("vnodes", "md5"), ("ketama", "xxh3")])
def test_a_hash_that_does_not_fit_the_ring_is_refused(distribution, hash_name):
    # the configuration refuses it before any topology is built
    with pytest.raises(ConfigError, match="needs"):
        from_node_list("a:1,b:2", distribution=distribution, hash=hash_name)
