"""The ring: balance, weights, determinism, and how little moves when a node joins."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import ConfigError, from_node_list
from router.nodes import NodeSpec, parse_node_list
from router.placement import Placement
from router.ring import Modula, Ring, build_vnode_ring, xxh3_64

KEYS = [b"key:%d" % i for i in range(60_000)]

node_names = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.:-", min_size=1, max_size=20),
    min_size=3, max_size=10, unique=True)


def shares(ring: Ring, keys=KEYS) -> Counter:
    return Counter(ring.lookup(xxh3_64(k)) for k in keys)


@settings(max_examples=25, deadline=None)
@given(node_names)
def test_busiest_node_holds_at_most_ten_percent_over_the_mean(names):
    ring = build_vnode_ring(names, [1] * len(names))
    counts = shares(ring)
    mean = len(KEYS) / len(names)
    assert max(counts.values()) <= 1.10 * mean


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=3, max_size=6))
def test_keys_follow_node_weights(weights):
    names = [f"10.0.0.{i}:6379" for i in range(len(weights))]
    ring = build_vnode_ring(names, weights)
    counts = shares(ring)
    total = sum(weights)
    for index, weight in enumerate(weights):
        expected = len(KEYS) * weight / total
        assert abs(counts[index] - expected) <= 0.12 * expected


@settings(max_examples=20, deadline=None)
@given(node_names)
def test_the_same_nodes_always_give_the_same_ring(names):
    assert build_vnode_ring(names, [1] * len(names)) == build_vnode_ring(list(names), [1] * len(names))


@settings(max_examples=10, deadline=None)
@given(node_names)
def test_adding_a_node_moves_only_keys_to_the_new_node(names):
    before = build_vnode_ring(names, [1] * len(names))
    after = build_vnode_ring([*names, "newcomer:1"], [1] * (len(names) + 1))
    moved = 0
    new_index = len(names)
    for key in KEYS[:20_000]:
        h = xxh3_64(key)
        old, new = before.lookup(h), after.lookup(h)
        if old != new:
            assert new == new_index  # nothing moves between old nodes
            moved += 1
    fair_share = 20_000 / (len(names) + 1)
    assert abs(moved - fair_share) <= 0.12 * fair_share


def test_lookup_wraps_past_the_last_token_to_the_first():
    ring = Ring([10, 20, 30], [0, 1, 2])
    assert ring.lookup(5) == 0
    assert ring.lookup(10) == 0
    assert ring.lookup(11) == 1
    assert ring.lookup(30) == 2
    assert ring.lookup(31) == 0


def test_arcs_cover_the_ring_once():
    ring = Ring([10, 20, 30], [0, 1, 0])
    assert list(ring.arcs()) == [(30, 10, 0), (10, 20, 1), (20, 30, 0)]


def test_modula_uses_the_remainder():
    assert [Modula([0, 1, 1]).lookup(h) for h in range(6)] == [0, 1, 1, 0, 1, 1]


def test_ring_refuses_unsorted_tokens():
    with pytest.raises(ValueError):
        Ring([2, 1], [0, 1])


def test_hash_tag_puts_tagged_keys_on_one_node():
    placement = from_node_list("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").placement()
    homes = {placement.node_index(b"{user:42}:field%d" % i) for i in range(100)}
    assert homes == {placement.node_index(b"user:42")}


@pytest.mark.parametrize("key", [b"{}empty", b"no-tag", b"{unclosed", b"}{reversed"])
def test_keys_without_a_usable_tag_hash_whole(key):
    ring = build_vnode_ring(["a", "b", "c"], [1, 1, 1])
    tagged = Placement(xxh3_64, ring, b"{}")
    untagged = Placement(xxh3_64, ring, None)
    assert tagged.node_index(key) == untagged.node_index(key)


def test_other_hash_tag_characters_can_be_configured():
    ring = build_vnode_ring(["a", "b", "c"], [1, 1, 1])
    placement = Placement(xxh3_64, ring, b"[]")
    assert placement.node_index(b"x[tag]y") == placement.node_index(b"tag")


def test_node_names_replace_addresses_in_placement():
    by_name = parse_node_list("10.0.0.1:6379:1 alpha,10.0.0.2:6379:1 beta")
    moved = parse_node_list("10.0.0.9:6379:1 alpha,10.0.0.8:6379:1 beta")
    ring_a = build_vnode_ring([n.label for n in by_name], [1, 1])
    ring_b = build_vnode_ring([n.label for n in moved], [1, 1])
    assert ring_a == ring_b


def test_node_parsing_rejects_bad_addresses():
    for bad in ["nohost", "host:notaport", "host:0:0", "host:70000"]:
        with pytest.raises(ValueError):
            NodeSpec.parse(bad)


def test_duplicate_nodes_are_a_config_error():
    with pytest.raises(ConfigError):
        from_node_list("127.0.0.1:1,127.0.0.1:1")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=(1 << 20) - 1), min_size=1, max_size=60,
                unique=True),
       st.lists(st.integers(min_value=0, max_value=(1 << 21)), min_size=1, max_size=50))
def test_bucket_table_answers_exactly_as_the_bisect(tokens, hashes):
    from bisect import bisect_left

    from router.placement import bucket_table

    tokens.sort()
    owners = [i % 5 - 2 for i in range(len(tokens))]  # negative codes too (moving arcs)
    owners.append(owners[0])
    table, shift = bucket_table(tokens, owners)
    # every bucket edge, plus hashes past the last token's width
    probes = [*hashes, *tokens, *(t - 1 for t in tokens if t), *(t + 1 for t in tokens)]
    for h in probes:
        expected = owners[bisect_left(tokens, h)]
        bucket = h >> shift
        got = table[bucket] if bucket < len(table) else None
        assert got is None or got == expected, (h, tokens)


def test_placement_with_the_bucket_table_matches_the_ring_lookup():
    placement = from_node_list("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003").placement()
    ring = placement.distribution
    for i in range(20_000):
        key = b"key:%d" % i
        assert placement.node_index(key) == ring.lookup(xxh3_64(key))
