"""The proxy as a client sees it: one Redis server, whatever the keys' nodes."""

from __future__ import annotations

import pytest
import redis
from helpers import HOST, direct, node_list, raw_exchange

from router.config import from_node_list


def placement_for(nodes):
    return from_node_list(node_list(nodes)).placement()


def test_get_returns_what_set_stored(proxy):
    client = proxy.client()
    assert client.set("greeting", "hello") is True
    assert client.get("greeting") == b"hello"


@pytest.mark.parametrize("size", [1023, 1024, 5000])
def test_keys_and_values_of_any_length_go_through_untouched(proxy, nodes, size):
    # requests of two and three arguments are joined from ready length headers below 1024
    # bytes and formatted above: both sides of the edge, for the key and for the value
    client = proxy.client()
    key, value = b"k" * size, bytes(range(256)) * (size // 256) + b"\r\n" * 3
    assert client.set(key, value) is True
    assert client.get(key) == value
    owner = nodes[placement_for(nodes).node_index(key)]
    assert direct(owner).get(key) == value


def test_each_key_lands_on_the_node_its_placement_names(proxy, nodes):
    client = proxy.client()
    placement = placement_for(nodes)
    for i in range(300):
        client.set(f"user:{i}", i)
    for i in range(300):
        key = f"user:{i}".encode()
        owner = nodes[placement.node_index(key)]
        assert direct(owner).get(key) == str(i).encode()
        others = [n for n in nodes if n is not owner]
        assert all(direct(n).exists(key) == 0 for n in others)


def test_keys_spread_over_every_node(proxy, nodes):
    client = proxy.client()
    for i in range(300):
        client.set(f"spread:{i}", 1)
    counts = [direct(n).dbsize() for n in nodes]
    assert sum(counts) == 300
    assert all(c > 50 for c in counts)


def test_resp3_client_gets_resp3_replies(proxy):
    reply = raw_exchange(proxy.port, b"HELLO 3\r\nHSET h f v\r\nHGETALL h\r\n", 3)
    assert reply.startswith(b"%")  # the HELLO reply is a map
    assert reply.endswith(b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n")


def test_resp2_client_gets_resp2_replies(proxy):
    reply = raw_exchange(proxy.port, b"HSET h2 f v\r\nHGETALL h2\r\n", 2)
    assert reply == b":1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"


def test_redis_py_defaults_work_through_the_proxy(proxy):
    # redis-py 8 opens with HELLO 3 and CLIENT SETINFO, which twemproxy refuses
    client = redis.Redis(host=HOST, port=proxy.port)
    assert client.ping() is True
    client.hset("profile", mapping={"name": "ada", "year": "1815"})
    assert client.hgetall("profile") == {b"name": b"ada", b"year": b"1815"}
    assert client.zadd("scores", {"a": 1.5}) == 1
    assert list(map(tuple, client.zrange("scores", 0, -1, withscores=True))) == [(b"a", 1.5)]


def test_mget_returns_values_in_request_order_across_nodes(proxy, nodes):
    client = proxy.client()
    keys = [f"m:{i}" for i in range(40)]
    placement = placement_for(nodes)
    assert len({placement.node_index(k.encode()) for k in keys}) == len(nodes)
    for i, key in enumerate(keys):
        if i % 3:
            client.set(key, i)
    expected = [str(i).encode() if i % 3 else None for i in range(40)]
    assert client.mget(keys) == expected


def test_mget_with_repeated_keys_repeats_values(proxy):
    client = proxy.client()
    client.mset({"r:a": "1", "r:b": "2"})
    assert client.mget(["r:a", "r:b", "r:a", "r:missing"]) == [b"1", b"2", b"1", None]


def test_mset_writes_every_key_to_its_node(proxy, nodes):
    client = proxy.client()
    mapping = {f"ms:{i}": str(i) for i in range(50)}
    assert client.mset(mapping) is True
    placement = placement_for(nodes)
    for key, value in mapping.items():
        owner = nodes[placement.node_index(key.encode())]
        assert direct(owner).get(key) == value.encode()


def test_mset_with_odd_arguments_is_an_arity_error(proxy):
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        proxy.client().execute_command("MSET", "a", "1", "b")


def test_del_and_exists_sum_counts_over_nodes(proxy):
    client = proxy.client()
    keys = [f"d:{i}" for i in range(30)]
    client.mset({k: 1 for k in keys})
    assert client.exists(*keys, "d:none") == 30
    assert client.exists("d:1", "d:1") == 2
    assert client.delete(*keys[:10], "d:none") == 10
    assert client.unlink(*keys[10:20]) == 10
    assert client.touch(*keys[20:]) == 10
    assert client.exists(*keys) == 10


def test_multi_key_command_across_nodes_is_refused_with_crossslot(proxy, nodes):
    placement = placement_for(nodes)
    a = "x:1"
    b = next(f"x:{i}" for i in range(2, 100)
             if placement.node_index(f"x:{i}".encode()) != placement.node_index(a.encode()))
    with pytest.raises(redis.exceptions.ClusterCrossSlotError) as info:  # the CROSSSLOT code
        proxy.client().sunionstore(a, [b])
    assert nodes[placement.node_index(a.encode())].address in str(info.value)
    assert nodes[placement.node_index(b.encode())].address in str(info.value)


def test_multi_key_commands_run_when_hash_tags_keep_keys_together(proxy):
    client = proxy.client()
    client.sadd("{u1}:a", "x", "y")
    client.sadd("{u1}:b", "y", "z")
    assert client.sinterstore("{u1}:both", ["{u1}:a", "{u1}:b"]) == 1
    assert client.rename("{u1}:both", "{u1}:renamed") is True
    assert client.smembers("{u1}:renamed") == {b"y"}
    assert client.lmove("{u1}:l1", "{u1}:l2") is None
    assert client.msetnx({"{u1}:n1": 1, "{u1}:n2": 2}) is True


def test_every_data_type_round_trips(proxy):
    client = proxy.client(decode_responses=True)
    client.rpush("list", "a", "b")
    assert client.lrange("list", 0, -1) == ["a", "b"]
    client.sadd("set", "a")
    assert client.smembers("set") == {"a"}
    client.pfadd("hll", "a", "b", "c")
    assert client.pfcount("hll") == 3
    client.setbit("bits", 7, 1)
    assert client.bitcount("bits") == 1
    client.geoadd("geo", (13.361389, 38.115556, "Palermo"))
    assert client.geopos("geo", "Palermo")[0] is not None
    stream_id = client.xadd("stream", {"f": "v"})
    assert client.xrange("stream")[0][0] == stream_id
    assert client.xread({"stream": "0"}, count=1)[0][0] == "stream" or client.xread(
        {"stream": "0"}, count=1)["stream"]
    assert client.object("encoding", "list") in ("listpack", "quicklist", "ziplist")


def test_expiry_commands_go_to_the_keys_node(proxy, nodes):
    client = proxy.client()
    client.set("ttl:key", "v", ex=100)
    assert 0 < client.ttl("ttl:key") <= 100
    assert client.persist("ttl:key") is True
    assert client.ttl("ttl:key") == -1
    assert client.type("ttl:key") == b"string"
    dumped = client.dump("ttl:key")
    client.restore("ttl:copy", 0, dumped)
    assert client.get("ttl:copy") == b"v"


def test_unknown_command_gets_the_same_error_as_redis(proxy, nodes):
    with pytest.raises(redis.ResponseError) as via_proxy:
        proxy.client(protocol=2).execute_command("FOOBAR", "a", "b")
    with pytest.raises(redis.ResponseError) as via_node:
        direct(nodes[0]).execute_command("FOOBAR", "a", "b")
    assert str(via_proxy.value) == str(via_node.value)


def test_wrong_arity_gets_the_same_error_as_redis(proxy, nodes):
    with pytest.raises(redis.ResponseError) as via_proxy:
        proxy.client(protocol=2).execute_command("GET")
    with pytest.raises(redis.ResponseError) as via_node:
        direct(nodes[0]).execute_command("GET")
    assert str(via_proxy.value) == str(via_node.value)


def test_unsupported_command_is_refused_naming_it(proxy):
    with pytest.raises(redis.ResponseError, match="'CONFIG GET' is not supported"):
        proxy.client().config_get("maxmemory")


def test_select_zero_is_accepted_and_others_refused(proxy):
    client = proxy.client(protocol=2)
    assert client.execute_command("SELECT", "0") is True
    with pytest.raises(redis.ResponseError, match="database 0 only"):
        client.execute_command("SELECT", "1")


def test_ping_echo_and_client_commands_are_answered_by_the_proxy(proxy):
    client = proxy.client(protocol=2)
    assert client.ping() is True
    assert client.echo("hi") == b"hi"
    assert client.client_setname("worker-1") is True
    assert client.client_getname() in ("worker-1", b"worker-1")
    assert isinstance(client.client_id(), int)
    assert client.execute_command("CLIENT", "SETINFO", "LIB-NAME", "mylib") == b"OK"
    assert "name=worker-1" in client.execute_command("CLIENT", "INFO").decode()


def test_hello_with_an_unknown_protocol_is_refused(proxy):
    reply = raw_exchange(proxy.port, b"HELLO 4\r\nPING\r\n", 2)
    assert reply == b"-NOPROTO unsupported protocol version\r\n+PONG\r\n"


def test_command_docs_is_answered_for_redis_cli(proxy):
    assert proxy.client().command_count() > 200


def test_inline_commands_work_like_on_redis(proxy):
    reply = raw_exchange(proxy.port, b"SET inline value\r\nGET inline\r\n", 2)
    assert reply == b"+OK\r\n$5\r\nvalue\r\n"


def test_replies_of_a_pipeline_come_back_in_order(proxy):
    client = proxy.client()
    pipe = client.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"p:{i}", i)
        pipe.get(f"p:{i}")
        pipe.incr("p:counter")
    results = pipe.execute()
    for i in range(500):
        assert results[3 * i] is True
        assert results[3 * i + 1] == str(i).encode()
        assert results[3 * i + 2] == i + 1


def test_large_values_pass_through(proxy):
    client = proxy.client()
    value = bytes(range(256)) * 8192  # 2 MiB, every byte value
    client.set("big", value)
    assert client.get("big") == value
