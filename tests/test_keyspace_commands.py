"""Commands over the whole keyspace, scripts, INFO and AUTH, through the proxy."""

from __future__ import annotations

import subprocess

import pytest
import redis
from helpers import HOST, direct

from router.config import from_node_list


def test_scan_returns_every_key_of_every_node_exactly_once(proxy, nodes):
    client = proxy.client()
    pipe = client.pipeline(transaction=False)
    for i in range(10_000):
        pipe.set(f"scan:{i}", i)
    pipe.execute()
    assert all(direct(n).dbsize() > 2000 for n in nodes)
    seen = []
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, count=500)
        seen.extend(keys)
        if cursor == 0:
            break
    assert len(seen) == 10_000
    assert set(seen) == {f"scan:{i}".encode() for i in range(10_000)}


def test_scan_keeps_every_key_present_throughout_despite_concurrent_writes(proxy):
    client = proxy.client()
    client.mset({f"stay:{i}": i for i in range(3000)})
    seen = set()
    cursor = 0
    i = 0
    while True:
        cursor, keys = client.scan(cursor, count=200)
        seen.update(keys)
        client.set(f"new:{i}", i)  # keys come and go during the scan
        client.delete(f"new:{i - 1}")
        i += 1
        if cursor == 0:
            break
    assert {f"stay:{i}".encode() for i in range(3000)} <= seen


def test_scan_passes_match_and_type_to_the_nodes(proxy):
    client = proxy.client()
    client.mset({f"m:{i}": i for i in range(200)})
    client.rpush("m:list", "x")
    found = set(client.scan_iter(match="m:1*", count=100))
    assert found == {f"m:{i}".encode() for i in range(200) if str(i).startswith("1")}
    assert set(client.scan_iter(_type="list")) == {b"m:list"}


def test_scan_with_a_bad_cursor_is_an_error(proxy):
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        proxy.client().execute_command("SCAN", "notanumber")


def test_dbsize_sums_the_nodes(proxy, nodes):
    client = proxy.client()
    client.mset({f"d:{i}": i for i in range(300)})
    assert client.dbsize() == 300 == sum(direct(n).dbsize() for n in nodes)


def test_keys_gathers_matches_from_every_node(proxy):
    client = proxy.client()
    client.mset({f"k:{i}": i for i in range(100)})
    assert sorted(client.keys("k:*")) == sorted(f"k:{i}".encode() for i in range(100))


def test_flushall_empties_every_node(proxy, nodes):
    client = proxy.client()
    client.mset({f"f:{i}": i for i in range(100)})
    assert client.flushall() is True
    assert all(direct(n).dbsize() == 0 for n in nodes)


def test_randomkey_finds_a_key_on_any_node_and_nil_when_empty(proxy):
    client = proxy.client()
    assert client.randomkey() is None
    client.set("only", 1)
    assert client.randomkey() == b"only"


def test_lastsave_and_time_answer(proxy):
    client = proxy.client()
    assert client.lastsave() is not None
    seconds, micros = client.time()
    assert seconds > 1_600_000_000


def test_eval_runs_on_the_node_of_its_keys(proxy, nodes):
    client = proxy.client()
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
    assert client.eval(script, 1, "ev:key", "hello") == b"hello"
    placement = from_node_list(",".join(n.address for n in nodes)).placement()
    assert direct(nodes[placement.node_index(b"ev:key")]).get("ev:key") == b"hello"


def test_eval_with_keys_on_several_nodes_is_refused(proxy, nodes):
    placement = from_node_list(",".join(n.address for n in nodes)).placement()
    a = "e:1"
    b = next(f"e:{i}" for i in range(2, 200)
             if placement.node_index(f"e:{i}".encode()) != placement.node_index(a.encode()))
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        proxy.client().eval("return 1", 2, a, b)


def test_eval_without_keys_runs_on_the_first_node(proxy, nodes):
    proxy.client().eval("redis.call('SET', 'nokeys', 'x')", 0)
    assert direct(nodes[0]).get("nokeys") == b"x"


def test_script_load_puts_the_script_on_every_node(proxy, nodes):
    client = proxy.client()
    sha = client.script_load("return ARGV[1]")
    assert all(direct(n).script_exists(sha) == [True] for n in nodes)
    assert client.script_exists(sha, "0" * 40) == [True, False]
    for i in range(30):  # whichever node the key is on, the script is there
        assert client.evalsha(sha, 1, f"s:{i}", "x") == b"x"
    assert client.script_flush() is True
    assert client.script_exists(sha) == [False]


def test_fcall_runs_functions_loaded_everywhere(proxy):
    client = proxy.client()
    code = "#!lua name=lib\nredis.register_function('echo1', function(keys, args) return args[1] end)"
    assert client.function_load(code, replace=True) in (b"lib", "lib")
    assert client.fcall("echo1", 1, "fc:key", "hi") == b"hi"
    client.function_flush()


def test_keys_can_be_disabled_by_config(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(1)
    path = tmp_path / "c.toml"
    path.write_text(f'nodes = ["{nodes[0].address}"]\nallow_keys = false\nallow_flush = false\n'
                    'scripts_without_keys = "refuse"\n')
    client = make_proxy("--config", str(path)).client()
    with pytest.raises(redis.ResponseError, match="disabled"):
        client.keys("*")
    with pytest.raises(redis.ResponseError, match="disabled"):
        client.flushall()
    with pytest.raises(redis.ResponseError, match="with no keys is refused"):
        client.eval("return 1", 0)


def test_info_shows_proxy_sections_and_every_node(proxy, nodes):
    client = proxy.client()
    client.mset({f"i:{i}": i for i in range(50)})
    info = client.info()
    assert info["connected_clients"] >= 1
    assert info["total_commands_processed"] >= 1
    assert info["db0"]["keys"] == 50
    assert info["used_memory"] > 0
    node_info = client.info("nodes")
    assert {node_info[f"node{i}"]["address"] for i in range(3)} == {n.address for n in nodes}
    assert all(node_info[f"node{i}"]["state"] == "up" for i in range(3))


def test_redis_cli_stat_mode_reads_the_proxy(proxy):
    # --stat runs until interrupted: take its first screen
    proc = subprocess.Popen(["redis-cli", "-h", HOST, "-p", str(proxy.port), "--stat", "-i", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.kill()
        proc.wait()
    assert lines[1].split()[:3] == ["keys", "mem", "clients"]
    assert lines[2].split()[0].isdigit()  # the key count, not an error


def test_requirepass_demands_auth_before_anything_else(make_nodes, make_proxy):
    nodes = make_nodes(1)
    proxy = make_proxy("--nodes", nodes[0].address, "--requirepass", "s3cret", password="s3cret")
    anonymous = redis.Redis(host=HOST, port=proxy.port, protocol=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get("x")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=HOST, port=proxy.port, password="wrong", protocol=2).ping()
    assert proxy.client().set("x", 1) is True
    assert redis.Redis(host=HOST, port=proxy.port, username="default",
                       password="s3cret").get("x") == b"1"


def test_node_credentials_are_sent_on_every_node_connection(make_nodes, make_proxy, tmp_path):
    from backends.local_nodes import RedisOptions

    nodes = make_nodes(2, options=RedisOptions(password="nodepw"))
    path = tmp_path / "c.toml"
    path.write_text("nodes = [" + ", ".join(f'"{n.address}"' for n in nodes) + "]\n"
                    'node_password = "nodepw"\n')
    client = make_proxy("--config", str(path)).client()
    client.mset({f"a:{i}": i for i in range(20)})  # both nodes, over RESP3 (HELLO 3 AUTH)
    assert client.mget([f"a:{i}" for i in range(20)]) == [str(i).encode() for i in range(20)]
    resp2 = make_proxy("--config", str(path)).client(protocol=2)  # over RESP2 (AUTH)
    assert resp2.get("a:3") == b"3"
