"""Library mode: ``ShardedClient`` and ``TrioShardedClient`` place every key where the proxy
would, speak redis-py's API, split and merge multi-key commands as the proxy does, and keep
working when one node is down.

Every test runs against real redis-server nodes; keys written one way (library or proxy) are
read the other way, or looked up on the node that should hold them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis
import trio
from helpers import REPO, direct, node_list

from backends.local_nodes import HOST, RedisProcess
from router import ShardedClient, TrioShardedClient
from router.client import Batch, NodeConnectionError, NodeTimeoutError, RoutingError
from router.codecs import MsgpackCodec

KEYS = 10_000


def addresses(nodes: list[RedisProcess]) -> list[str]:
    return [n.address for n in nodes]


def node_by_address(nodes: list[RedisProcess], address: str) -> RedisProcess:
    return next(n for n in nodes if n.address == address)


def keys_on_distinct_nodes(client: Any, count: int, prefix: str = "k") -> list[str]:
    """``count`` keys that the client places on ``count`` different nodes."""
    found: dict[str, str] = {}
    for i in range(10_000):
        key = f"{prefix}:{i}"
        found.setdefault(client.node_for(key), key)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("the placement never reached that many nodes")


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # keep polling; report the last failure
            last = exc
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen in {timeout}s (last error: {last!r})")


def write_through_pipeline(client: Any, items: dict[str, str], chunk: int = 2000) -> None:
    names = list(items)
    for start in range(0, len(names), chunk):
        pipe = client.pipeline(transaction=False)
        for name in names[start:start + chunk]:
            pipe.set(name, items[name])
        assert all(pipe.execute())


def read_through_pipeline(client: Any, names: list[str], chunk: int = 2000) -> list[Any]:
    values: list[Any] = []
    for start in range(0, len(names), chunk):
        pipe = client.pipeline(transaction=False)
        for name in names[start:start + chunk]:
            pipe.get(name)
        values.extend(pipe.execute())
    return values


def sample(prefix: str) -> dict[str, str]:
    return {f"{prefix}:{i}": f"value-{i}" for i in range(KEYS)}


def twemproxy_yaml(tmp_path, nodes: list[RedisProcess]) -> str:
    servers = "\n".join(f"   - {n.address}:1" for n in nodes)
    path = tmp_path / "nutcracker.yml"
    path.write_text("alpha:\n"
                    f"  listen: {HOST}:22121\n"
                    "  hash: fnv1a_64\n"
                    "  distribution: ketama\n"
                    "  redis: true\n"
                    "  servers:\n"
                    f"{servers}\n")
    return str(path)


# ---------------------------------------------------------------- one placement, two modes


def test_keys_written_through_the_library_are_read_through_the_proxy(nodes, proxy):
    items = sample("lib")
    with ShardedClient(addresses(nodes)) as client:
        write_through_pipeline(client, items)
    values = read_through_pipeline(proxy.client(), list(items))
    assert values == [v.encode() for v in items.values()]


def test_keys_written_through_the_proxy_are_read_through_the_library(nodes, proxy):
    items = sample("px")
    write_through_pipeline(proxy.client(), items)
    with ShardedClient(addresses(nodes)) as client:
        values = read_through_pipeline(client, list(items))
    assert values == [v.encode() for v in items.values()]


def test_twemproxy_placement_library_writes_are_read_through_the_proxy(nodes, make_proxy,
                                                                       tmp_path):
    path = twemproxy_yaml(tmp_path, nodes)
    proxy = make_proxy("--twemproxy", path)
    items = sample("tw-lib")
    with ShardedClient.from_twemproxy(path) as client:
        write_through_pipeline(client, items)
    assert read_through_pipeline(proxy.client(), list(items)) == [v.encode() for v in items.values()]


def test_twemproxy_placement_proxy_writes_are_read_through_the_library(nodes, make_proxy,
                                                                       tmp_path):
    path = twemproxy_yaml(tmp_path, nodes)
    proxy = make_proxy("--twemproxy", path)
    items = sample("tw-px")
    write_through_pipeline(proxy.client(), items)
    with ShardedClient.from_twemproxy(path) as client:
        assert read_through_pipeline(client, list(items)) == [v.encode() for v in items.values()]


def test_node_for_agrees_with_ringleader_locate(nodes):
    names = [f"user:{i}" for i in range(50)] + ["{tag}:a", "{tag}:b", "plain"]
    out = subprocess.run([sys.executable, "-m", "router", "locate", "--nodes", node_list(nodes),
                          *names], capture_output=True, text=True, cwd=REPO, check=True).stdout
    located = dict(line.split("\t") for line in out.splitlines())
    client = ShardedClient(addresses(nodes))
    assert {name: client.node_for(name) for name in names} == located


def test_node_for_names_the_node_that_holds_a_key_written_through_the_proxy(nodes, proxy):
    writer = proxy.client()
    client = ShardedClient(addresses(nodes))
    for i in range(200):
        writer.set(f"where:{i}", "x")
    for i in range(200):
        holder = node_by_address(nodes, client.node_for(f"where:{i}"))
        assert direct(holder).exists(f"where:{i}") == 1


def test_from_config_reads_the_proxys_toml(nodes, tmp_path):
    path = tmp_path / "ringleader.toml"
    path.write_text("nodes = [" + ", ".join(f'"{n.address}"' for n in nodes) + "]\n"
                    'hash_tag = "{}"\n')
    client = ShardedClient.from_config(path)
    assert client.nodes == addresses(nodes)
    assert client.node_for("{x}:1") == client.node_for("{x}:2")


# ---------------------------------------------------------------- redis-py's API


def test_replies_are_what_redis_py_returns_with_protocol_2(nodes):
    client = ShardedClient(addresses(nodes))
    reference = direct(nodes[0])  # redis-py itself, protocol=2, on one node
    for target in (client, reference):
        assert target.set("k", "v", ex=10) is True
        assert target.set("k", "w", nx=True) is None
        target.hset("h", mapping={"f": "v", "g": 1})
        target.zadd("z", {"a": 1.5, "b": 2})
        target.set("n", 1.5)
    assert client.get("k") == reference.get("k") == b"v"
    assert 0 < client.ttl("k") <= 10
    assert client.hgetall("h") == reference.hgetall("h") == {b"f": b"v", b"g": b"1"}
    assert (client.zrange("z", 0, -1, withscores=True)
            == reference.zrange("z", 0, -1, withscores=True) == [(b"a", 1.5), (b"b", 2.0)])
    assert client.get("n") == b"1.5"
    assert client.incrbyfloat("n", 1) == 2.5
    assert client.execute_command("HSET", "h2", "f", "v") == 1
    assert client.type("h2") == b"hash"


def test_decode_responses_returns_str(nodes):
    client = ShardedClient(addresses(nodes), decode_responses=True)
    client.mset({"a": "é", "b": "2"})
    assert client.mget("a", "b", "missing") == ["é", "2", None]
    client.hset("h", "f", "v")
    assert client.hgetall("h") == {"f": "v"}


def test_ping_and_echo_are_answered_without_a_node(nodes):
    client = ShardedClient(addresses(nodes))
    assert client.ping() is True
    assert client.echo("hello") == b"hello"


def test_error_replies_raise_redis_py_exceptions(nodes):
    client = ShardedClient(addresses(nodes))
    client.set("s", "text")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        client.incr("s")


# ---------------------------------------------------------------- multi-key commands


def test_mget_mset_delete_exists_split_over_nodes_and_merge_in_key_order(nodes):
    client = ShardedClient(addresses(nodes))
    keys = keys_on_distinct_nodes(client, 3)
    assert client.mset({k: f"v-{k}" for k in keys}) is True
    for key in keys:  # each value is on its own node
        assert direct(node_by_address(nodes, client.node_for(key))).get(key) == f"v-{key}".encode()
    assert client.mget([keys[2], "absent", keys[0], keys[1]]) == [
        f"v-{keys[2]}".encode(), None, f"v-{keys[0]}".encode(), f"v-{keys[1]}".encode()]
    assert client.exists(*keys, "absent") == 3
    assert client.delete(keys[0], keys[1], "absent") == 2
    assert client.mget(keys) == [None, None, f"v-{keys[2]}".encode()]


def test_cross_node_command_is_refused_with_the_proxys_crossslot_error(nodes, proxy):
    client = ShardedClient(addresses(nodes))
    a, b = keys_on_distinct_nodes(client, 2)
    with pytest.raises(redis.exceptions.ClusterCrossSlotError) as from_library:
        client.rename(a, b)
    with pytest.raises(redis.exceptions.ClusterCrossSlotError) as from_proxy:
        proxy.client().rename(a, b)
    assert str(from_library.value) == str(from_proxy.value)
    assert a in str(from_library.value) and b in str(from_library.value)


def test_keys_under_one_hash_tag_share_a_node_for_multi_key_commands(nodes):
    client = ShardedClient(addresses(nodes))
    client.sadd("{u1}:a", "x", "y")
    client.sadd("{u1}:b", "y", "z")
    assert client.sinterstore("{u1}:both", ["{u1}:a", "{u1}:b"]) == 1
    assert client.smembers("{u1}:both") == {b"y"}


# ---------------------------------------------------------------- pipelines


def test_pipeline_results_come_back_in_call_order_across_nodes(nodes):
    client = ShardedClient(addresses(nodes))
    keys = keys_on_distinct_nodes(client, 3)
    with client.pipeline() as pipe:
        for i, key in enumerate(keys):
            pipe.set(key, i)
        pipe.incr(keys[1])
        pipe.get(keys[2])
        pipe.mget(keys)  # split over the nodes inside the pipeline too
        pipe.delete(*keys)
        pipe.get(keys[0])
        results = pipe.execute()
    assert results == [True, True, True, 2, b"2", [b"0", b"2", b"2"], 3, None]


def test_pipeline_groups_requests_into_one_write_per_node(nodes):
    client = ShardedClient(addresses(nodes))
    pipe = client.pipeline()
    for i in range(300):
        pipe.set(f"g:{i}", i)
    pipe.mget([f"g:{i}" for i in range(300)])
    batch = Batch([call for call, _ in pipe.command_stack])
    writes = list(batch.payloads())
    assert sorted(node for node, _, _ in writes) == [0, 1, 2]
    assert sum(count for _, _, count in writes) == 300 + 3  # the MGET is one part per node


def test_pipeline_errors_are_raised_or_returned_in_place(nodes):
    client = ShardedClient(addresses(nodes))
    client.set("text", "x")
    pipe = client.pipeline()
    pipe.set("a", 1).incr("text").get("a")
    with pytest.raises(redis.ResponseError, match=r"Command # 2 \(INCRBY text 1\)"):
        pipe.execute()
    pipe.set("a", 1).incr("text").get("a")
    ok, error, value = pipe.execute(raise_on_error=False)
    assert ok is True and isinstance(error, redis.ResponseError) and value == b"1"


def test_transactional_pipelines_are_refused_clearly(nodes):
    client = ShardedClient(addresses(nodes))
    with pytest.raises(RoutingError, match="transaction=False"):
        client.pipeline(transaction=True)


# ---------------------------------------------------------------- what library mode lacks


def test_commands_that_need_proxy_state_raise_routing_error(nodes):
    client = ShardedClient(addresses(nodes))
    with pytest.raises(RoutingError, match="'CLIENT LIST' is not supported in library mode"):
        client.client_list()
    with pytest.raises(RoutingError, match="pub/sub"):
        client.pubsub()


def test_client_name_is_kept_by_the_library_like_the_proxy_keeps_it(nodes):
    client = ShardedClient(addresses(nodes))
    assert client.client_setname("worker-1") is True
    assert client.client_getname() == "worker-1"  # redis-py's callback decodes the name


def test_blocking_pop_waits_beyond_the_socket_timeout(nodes):
    client = ShardedClient(addresses(nodes), socket_timeout=0.2)
    pusher = threading.Timer(0.5, lambda: direct(node_by_address(
        nodes, client.node_for("queue"))).rpush("queue", "job"))
    pusher.start()
    try:
        assert client.blpop(["queue"], timeout=5) == (b"queue", b"job")
    finally:
        pusher.join()


# ---------------------------------------------------------------- failures


def test_a_down_node_raises_an_error_naming_it_while_others_keep_working(make_nodes):
    nodes = make_nodes(3)
    client = ShardedClient(addresses(nodes))
    keys = keys_on_distinct_nodes(client, 3)
    for key in keys:
        client.set(key, "before")
    dead = node_by_address(nodes, client.node_for(keys[1]))
    dead.stop()
    with pytest.raises(redis.ConnectionError, match=dead.address) as info:
        client.get(keys[1])
    assert isinstance(info.value, NodeConnectionError) and info.value.node == dead.address
    assert client.get(keys[0]) == b"before"
    assert client.set(keys[2], "after") is True


def test_a_down_node_fails_only_its_own_pipeline_commands(make_nodes):
    nodes = make_nodes(3)
    client = ShardedClient(addresses(nodes))
    keys = keys_on_distinct_nodes(client, 3)
    node_by_address(nodes, client.node_for(keys[0])).stop()
    pipe = client.pipeline()
    for key in keys:
        pipe.set(key, "v")
    first, second, third = pipe.execute(raise_on_error=False)
    assert isinstance(first, NodeConnectionError)
    assert second is True and third is True
    for key in keys:
        pipe.set(key, "v")
    with pytest.raises(NodeConnectionError):
        pipe.execute()


def test_a_hung_node_times_out_after_socket_timeout_and_recovers(make_nodes):
    nodes = make_nodes(2)
    client = ShardedClient(addresses(nodes), socket_timeout=0.3)
    key = keys_on_distinct_nodes(client, 1)[0]
    hung = node_by_address(nodes, client.node_for(key))
    client.set(key, "v")
    hung.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(NodeTimeoutError, match=hung.address):
            client.get(key)
        assert time.monotonic() - started < 5
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    assert eventually(lambda: client.get(key) == b"v", what="the node answering again")


def test_a_pooled_connection_the_node_closed_is_replaced_without_an_error(make_nodes):
    nodes = make_nodes(1)
    client = ShardedClient(addresses(nodes))
    client.set("k", "v")  # leaves a pooled connection
    direct(nodes[0]).client_kill_filter(skipme=True)  # the node drops every other connection
    assert client.get("k") == b"v"


def test_concurrent_threads_share_one_client(nodes):
    client = ShardedClient(addresses(nodes))

    def work() -> None:
        for _ in range(200):
            client.incr("counter")
            client.mget(["counter", "other"])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.get("counter") == b"800"


# ---------------------------------------------------------------- value codec


def test_msgpack_codec_round_trips_python_values(nodes):
    client = ShardedClient(addresses(nodes), value_codec="msgpack")
    value = {"name": "ada", "tags": ["x", "y"], "raw": b"\x00\xff", "n": 3, "f": 0.5, 7: None}
    assert client.set("obj", value) is True
    assert client.get("obj") == value
    assert client.mset({"one": 1, "list": [1, [2]], "text": "t"}) is True
    assert client.mget(["one", "list", "missing", "text"]) == [1, [1, [2]], None, "t"]
    assert client.set("obj", "new", get=True) == value  # SET ... GET returns the old value
    holder = direct(node_by_address(nodes, client.node_for("obj")))
    assert holder.get("obj") == msgpack.packb("new")  # stored as msgpack on the node


def test_msgpack_codec_object_with_decode_responses(nodes):
    client = ShardedClient(addresses(nodes), value_codec=MsgpackCodec(), decode_responses=True)
    client.set("b", b"bytes stay bytes")
    client.hset("h", "f", "v")  # hashes are not touched by the codec
    assert client.get("b") == b"bytes stay bytes"
    assert client.hgetall("h") == {"f": "v"}


# ---------------------------------------------------------------- trio


async def test_trio_client_reads_what_the_proxy_wrote(nodes, proxy):
    writer = proxy.client()
    writer.mset({f"t:{i}": i for i in range(100)})
    async with TrioShardedClient(addresses(nodes)) as client:
        assert await client.mget([f"t:{i}" for i in range(100)]) == [
            str(i).encode() for i in range(100)]
        assert await client.set("k", "v", ex=10) is True
        assert await client.hset("h", mapping={"f": "v"}) == 1
        assert await client.hgetall("h") == {b"f": b"v"}
    assert writer.get("k") == b"v"


async def test_trio_pipeline_returns_results_in_call_order(nodes):
    async with TrioShardedClient(addresses(nodes)) as client:
        keys = [f"p:{i}" for i in range(30)]
        async with client.pipeline() as pipe:
            for i, key in enumerate(keys):
                pipe.set(key, i)
            pipe.mget(keys)
            pipe.delete(*keys)
            results = await pipe.execute()
    assert results == [True] * 30 + [[str(i).encode() for i in range(30)], 30]


async def test_trio_client_is_shared_by_concurrent_tasks(nodes):
    async with TrioShardedClient(addresses(nodes), max_connections_per_node=4) as client:

        async def work(task: int) -> None:
            for i in range(50):
                await client.set(f"c:{task}:{i}", i)
                await client.incr("total")

        async with trio.open_nursery() as nursery:
            for task in range(10):
                nursery.start_soon(work, task)
        assert await client.get("total") == b"500"
        assert await client.exists(*[f"c:{t}:49" for t in range(10)]) == 10


async def test_trio_client_names_a_down_node_and_keeps_serving_others(make_nodes):
    nodes = make_nodes(2)
    async with TrioShardedClient(addresses(nodes)) as client:
        dead_key, live_key = keys_on_distinct_nodes(client, 2)
        dead = node_by_address(nodes, client.node_for(dead_key))
        dead.stop()
        with pytest.raises(NodeConnectionError, match=dead.address):
            await client.set(dead_key, "v")
        assert await client.set(live_key, "v") is True


async def test_trio_client_cross_node_refusal_and_codec(nodes):
    async with TrioShardedClient(addresses(nodes), value_codec="msgpack") as client:
        a, b = keys_on_distinct_nodes(client, 2)
        with pytest.raises(redis.exceptions.ClusterCrossSlotError):
            await client.rename(a, b)
        await client.set("obj", {"x": [1, 2]})
        assert await client.get("obj") == {"x": [1, 2]}
