"""Hot-key mitigations across a topology change: node indexes shift when a node is removed,
and keys move; replicated keys and split counters must keep answering correctly."""

from __future__ import annotations

import threading

from helpers import admin, direct, wait_migrations, write_state_dir_config
from test_hotkeys_proxy import REPLICATE_CONFIG, SPLIT_CONFIG, is_split, wait_replicated, wait_split
from test_proxy_failures import eventually

from backends.local_nodes import wait_until
from hotkeys.reserved import REGISTRY


def remove_first_node(proxy, nodes) -> None:
    """REMOVE-NODE of nodes[0]: every other node's index goes down by one."""
    admin(proxy, "REMOVE-NODE", nodes[0].address)
    wait_migrations(proxy)
    wait_until(lambda: len(admin(proxy, "STATUS")["shards"]) == len(nodes) - 1, 30,
               "shard removed")


def key_not_on(client, node, prefix: str) -> str:
    """A key (written through the proxy) that ``node`` does not hold."""
    for i in range(100):
        key = f"{prefix}{i}"
        client.set(key, "value")
        if not direct(node).exists(key):
            return key
        client.delete(key)
    raise AssertionError("every key landed on one node")


def test_a_replicated_key_reads_right_after_node_indexes_shift(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(3)
    proxy = make_proxy("--config", write_state_dir_config(tmp_path, nodes, REPLICATE_CONFIG))
    client = proxy.client()
    key = key_not_on(client, nodes[0], "popular:")
    wait_replicated(client, key)
    remove_first_node(proxy, nodes)
    for _ in range(300):
        assert client.get(key) == b"value"
    client.set(key, "new")
    assert {client.get(key) for _ in range(50)} == {b"new"}
    wait_replicated(client, key)  # copies remade on the new ring, still right
    assert {client.get(key) for _ in range(300)} == {b"new"}
    # the copies made on the removed node were dropped there, registry and all
    eventually(lambda: not direct(nodes[0]).keys("{rlcopy-*")
               and not direct(nodes[0]).smembers(REGISTRY), what="old copies dropped")


def test_a_split_counter_counts_exactly_across_a_node_removal(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(4)
    proxy = make_proxy("--config", write_state_dir_config(tmp_path, nodes, SPLIT_CONFIG))
    client = proxy.client()
    client.set("counter:moves", 0)
    counted = [0]

    def bump() -> None:
        client.incr("counter:moves")
        counted[0] += 1

    wait_split(client, "counter:moves", bump)
    stop = threading.Event()

    def increment() -> None:  # keeps it hot, and split, while the node goes
        mine = proxy.client()
        while not stop.is_set():
            mine.incr("counter:moves")
            counted[0] += 1

    worker = threading.Thread(target=increment)
    worker.start()
    try:
        remove_first_node(proxy, nodes)
        eventually(lambda: is_split(client, "counter:moves"), what="still split")
    finally:
        stop.set()
        worker.join()
    assert int(client.get("counter:moves")) == counted[0]  # exact: nothing lost
    for _ in range(200):
        client.incr("counter:moves")
    assert int(client.get("counter:moves")) == counted[0] + 200
    assert [k for k in direct(nodes[0]).keys() if k != REGISTRY] == []  # drained
    assert client.dbsize() == 1  # the parts, wherever they are now, stay uncounted
