"""A twemproxy user switches to ringleader with no data movement.

The live tests run a real nutcracker with a config, write keys through it, look on each
redis-server which keys it holds, and require ``load_pool(same file).placement()`` to name
that server for every key. The config tests check that a file is accepted or refused as
nutcracker itself (``nutcracker -t``) accepts or refuses it.
"""

from __future__ import annotations

import random
import subprocess
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from helpers import direct
from redis.driver_info import DriverInfo
from uhashring import HashRing

from backends.local_nodes import HOST, RedisProcess, free_port, port_accepts, redis_ping, wait_until
from router.continuum import (
    build_distribution,
    build_ketama,
    build_modula,
    ketama_point_count,
    twemproxy_name,
)
from router.hashkit import HASH_FUNCTIONS, TWEMPROXY_HASHES, ketama_points_of
from router.nodes import NodeSpec
from router.twemproxy import TwemproxyPool, load_pool, load_pools, parse_pools

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nutcracker.yml"

# --- running nutcracker ---------------------------------------------------------------------


def nutcracker_client(port: int) -> redis.Redis:
    """redis-py as nutcracker needs it: RESP2 and no CLIENT SETINFO on connect."""
    return redis.Redis(host=HOST, port=port, protocol=2, socket_timeout=10,
                       driver_info=DriverInfo(name=None, lib_version=None))


class Nutcracker:
    """One nutcracker process on free loopback ports, running the YAML at ``config``."""

    def __init__(self, binary: str, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.log = config.with_suffix(".log")
        self.proc = subprocess.Popen(
            [binary, "-c", str(config), "-s", str(free_port()), "-a", HOST, "-o", str(self.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            wait_until(lambda: redis_ping(HOST, port), 10, f"nutcracker on port {port}", self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"nutcracker did not start; log:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self) -> redis.Redis:
        return nutcracker_client(self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class PoolUnderTest:
    nutcracker: Nutcracker
    pool: TwemproxyPool
    yaml_path: Path


def pool_yaml(port: int, servers: Sequence[str], *, hash: str | None = None,
              distribution: str | None = None, hash_tag: str | None = None) -> str:
    lines = ["compat:", f"  listen: {HOST}:{port}", "  redis: true",
             "  auto_eject_hosts: false", "  server_retry_timeout: 2000",
             "  server_failure_limit: 1", "  timeout: 5000"]
    if hash is not None:
        lines.append(f"  hash: {hash}")
    if distribution is not None:
        lines.append(f"  distribution: {distribution}")
    if hash_tag is not None:
        lines.append(f'  hash_tag: "{hash_tag}"')
    lines.append("  servers:")
    lines += [f"   - {server}" for server in servers]
    return "\n".join(lines) + "\n"


@pytest.fixture
def run_pool(nutcracker_binary: str, tmp_path: Path) -> Iterator:
    """Factory: start nutcracker with a pool of ``servers`` and load the same file."""
    started: list[Nutcracker] = []

    def start(servers: Sequence[str], **options: str | None) -> PoolUnderTest:
        port = free_port()
        path = tmp_path / f"nutcracker-{len(started)}.yml"
        path.write_text(pool_yaml(port, servers, **options))
        pool = load_pool(path)
        nutcracker = Nutcracker(nutcracker_binary, path, port)
        started.append(nutcracker)
        return PoolUnderTest(nutcracker, pool, path)

    yield start
    for nutcracker in started:
        nutcracker.stop()


def write_through(nutcracker: Nutcracker, keys: Sequence[bytes]) -> list[object]:
    pipe = nutcracker.client().pipeline(transaction=False)
    for key in keys:
        pipe.set(key, b"v")
    return pipe.execute(raise_on_error=False)


def where_keys_are(nodes: Sequence[RedisProcess]) -> dict[bytes, int]:
    """key -> index of the redis-server holding it (each key must be on exactly one)."""
    found: dict[bytes, int] = {}
    for index, node in enumerate(nodes):
        for key in direct(node).keys("*"):
            assert key not in found, f"{key!r} is on node {found[key]} and node {index}"
            found[key] = index
    return found


def assert_placed_as_predicted(pool: TwemproxyPool, keys: Sequence[bytes],
                               found: dict[bytes, int], node_of_server: Sequence[int]) -> None:
    placement = pool.placement()
    wrong = {key: (found.get(key), node_of_server[placement.node_index(key)]) for key in keys
             if found.get(key) != node_of_server[placement.node_index(key)]}
    assert not wrong, (f"{len(wrong)} of {len(keys)} keys not where predicted "
                       f"(key: (actual node, predicted node)): {dict(list(wrong.items())[:8])}")


# --- keys -----------------------------------------------------------------------------------


def sample_keys(tag: str = "{}") -> list[bytes]:
    """A few hundred keys: short ASCII, binary with bytes above 0x7f, UTF-8, the empty key,
    and keys with well-formed, empty, unclosed and repeated hash tags."""
    rnd = random.Random(1205)
    opening, closing = tag.encode()[0:1], tag.encode()[1:2]
    keys = {b""}
    keys |= {b"user:%d" % i for i in range(80)}
    keys |= {rnd.randbytes(rnd.randint(1, 40)) for _ in range(120)}
    keys |= {f"ключ:{i}:été".encode() for i in range(20)}
    for i in range(15):
        n = b"%d" % i
        keys |= {
            opening + b"user" + n + closing + b":profile",  # tag "user<n>"
            b"x" + opening + b"user" + n + closing + b"y",  # same tag, other key
            opening + closing + b"user" + n,  # empty tag: the whole key is hashed
            b"a" + opening + closing + opening + n + closing,  # first tag empty: whole key
            opening + b"open" + n,  # never closed: whole key
            closing + b"c" + n + opening + b"t" + n + closing,  # a close before the open
            opening + b"t" + n + closing + opening + b"u" + closing,  # only the first tag counts
        }
    return sorted(keys)


# --- placement matches nutcracker: every hash x distribution x server layout --------------------


@dataclass(frozen=True)
class Layout:
    weights: tuple[int, int, int]
    names: tuple[str | None, str | None, str | None]
    hash_tag: str | None

    def servers(self, nodes: Sequence[RedisProcess]) -> list[str]:
        return [f"{node.address}:{weight}" + (f" {name}" if name else "")
                for node, weight, name in zip(nodes, self.weights, self.names, strict=True)]


LAYOUTS = {
    "plain": Layout((1, 1, 1), (None, None, None), None),
    "weighted": Layout((1, 2, 3), (None, None, None), "{}"),
    # nutcracker orders servers by name length, then bytes: beta, alpha, gamma-long.
    "named": Layout((2, 1, 1), ("gamma-long", "alpha", "beta"), "$$"),
}


@pytest.mark.parametrize("layout_id", list(LAYOUTS))
@pytest.mark.parametrize("distribution", ["ketama", "modula"])
@pytest.mark.parametrize("hash_name", list(TWEMPROXY_HASHES))
def test_every_key_lands_on_the_node_nutcracker_puts_it_on(
        run_pool, nodes: list[RedisProcess], hash_name: str, distribution: str, layout_id: str):
    layout = LAYOUTS[layout_id]
    run = run_pool(layout.servers(nodes), hash=hash_name, distribution=distribution,
                   hash_tag=layout.hash_tag)
    keys = sample_keys(layout.hash_tag or "{}")
    assert write_through(run.nutcracker, keys) == [True] * len(keys)
    assert_placed_as_predicted(run.pool, keys, where_keys_are(nodes), [0, 1, 2])


def test_a_pool_that_names_no_hash_or_distribution_uses_fnv1a_64_over_ketama(
        run_pool, nodes: list[RedisProcess]):
    run = run_pool(LAYOUTS["plain"].servers(nodes))
    assert (run.pool.hash, run.pool.distribution) == ("fnv1a_64", "ketama")
    keys = sample_keys()
    write_through(run.nutcracker, keys)
    assert_placed_as_predicted(run.pool, keys, where_keys_are(nodes), [0, 1, 2])


def test_equal_weights_can_get_fewer_than_160_points_through_float_rounding(
        run_pool, nodes: list[RedisProcess]):
    # 25 equal servers: float32 makes 40 * 25 * (1/25) come out just under 40 groups, so each
    # gets 156 points. Server i is stored on redis node i % 3.
    assert ketama_point_count(1, 25, 25) == 156
    servers = [f"{nodes[i % 3].address}:1 shard-{i:02d}" for i in range(25)]
    run = run_pool(servers, hash="murmur")
    keys = sample_keys() + [b"session:%d" % i for i in range(1000)]
    write_through(run.nutcracker, keys)
    assert_placed_as_predicted(run.pool, keys, where_keys_are(nodes), [i % 3 for i in range(25)])


@pytest.mark.parametrize(("hash_name", "distribution", "layout_id"), [
    ("fnv1a_64", "ketama", "weighted"),
    ("murmur", "modula", "named"),
    ("md5", "ketama", "named"),
])
def test_keys_written_through_nutcracker_are_read_back_through_ringleader(
        run_pool, make_proxy, nodes: list[RedisProcess], hash_name: str, distribution: str,
        layout_id: str):
    layout = LAYOUTS[layout_id]
    run = run_pool(layout.servers(nodes), hash=hash_name, distribution=distribution,
                   hash_tag=layout.hash_tag)
    keys = sample_keys(layout.hash_tag or "{}")
    pipe = run.nutcracker.client().pipeline(transaction=False)
    for key in keys:
        pipe.set(key, b"value of " + key)
    assert pipe.execute() == [True] * len(keys)
    run.nutcracker.stop()
    proxy = make_proxy("--twemproxy", str(run.yaml_path))
    pipe = proxy.client().pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    assert pipe.execute() == [b"value of " + key for key in keys]


# --- the continuum's edges, hit exactly with keys forged to a chosen crc32a ---------------------


def key_with_crc32(prefix: bytes, target: int) -> bytes:
    """``prefix`` plus 4 bytes making the key's CRC-32 ``target`` (CRC is affine over GF(2))."""
    base = zlib.crc32(prefix + bytes(4))
    pivots: dict[int, tuple[int, int]] = {}  # top bit -> (effect on the crc, bits of the suffix)
    for bit in range(32):
        effect = zlib.crc32(prefix + (1 << bit).to_bytes(4, "little")) ^ base
        combo = 1 << bit
        while effect:
            top = effect.bit_length() - 1
            if top not in pivots:
                pivots[top] = (effect, combo)
                break
            effect ^= pivots[top][0]
            combo ^= pivots[top][1]
    want, suffix = target ^ base, 0
    while want:
        effect, combo = pivots[want.bit_length() - 1]
        want ^= effect
        suffix ^= combo
    key = prefix + suffix.to_bytes(4, "little")
    assert zlib.crc32(key) == target
    return key


def test_a_key_hashing_exactly_to_a_point_belongs_to_that_points_server(
        run_pool, nodes: list[RedisProcess]):
    run = run_pool(LAYOUTS["plain"].servers(nodes), hash="crc32a")
    ring = build_ketama(run.pool.nodes)
    points = [i for i in range(1, len(ring.tokens)) if ring.owners[i] != ring.owners[i - 1]][:40]
    keys = [key_with_crc32(b"at-point-%d-" % i, ring.tokens[i]) for i in points]
    keys += [key_with_crc32(b"past-point-%d-" % i, ring.tokens[i - 1] + 1) for i in points]
    write_through(run.nutcracker, keys)
    assert_placed_as_predicted(run.pool, keys, where_keys_are(nodes), [0, 1, 2])


def test_a_key_hashing_above_the_last_point_wraps_to_the_first_point(
        run_pool, nodes: list[RedisProcess]):
    run = run_pool(LAYOUTS["plain"].servers(nodes), hash="crc32a")
    ring = build_ketama(run.pool.nodes)
    assert ring.tokens[-1] < 0xFFFFFFFF
    keys = [key_with_crc32(b"wrap-%d-" % i, h) for i, h in
            enumerate([ring.tokens[-1] + 1, 0xFFFFFFFF, 0, ring.tokens[0]])]
    write_through(run.nutcracker, keys)
    found = where_keys_are(nodes)
    assert {found[key] for key in keys} == {ring.owners[0]}


#: Two server names sharing a ketama point (found by search). "tie-84" sorts first in
#: nutcracker's order (shorter name), "tie-666" first in byte order.
TIE_NAMES, TIE_POINT = ("tie-666", "tie-84"), 765867936


def test_equal_points_go_to_the_server_first_in_nutcrackers_order(
        run_pool, nodes: list[RedisProcess]):
    for name in TIE_NAMES:
        assert TIE_POINT in {p for g in range(40) for p in ketama_points_of(b"%s-%d" % (
            name.encode(), g))}
    servers = [f"{nodes[0].address}:1 tie-666", f"{nodes[1].address}:1 tie-84",
               f"{nodes[2].address}:1 other"]
    run = run_pool(servers, hash="crc32a")
    keys = [key_with_crc32(b"tie-", TIE_POINT), key_with_crc32(b"below-tie-", TIE_POINT - 1)]
    write_through(run.nutcracker, keys)
    found = where_keys_are(nodes)
    assert [found[key] for key in keys] == [1, 1]
    assert_placed_as_predicted(run.pool, keys, found, [0, 1, 2])


def test_a_server_name_longer_than_the_point_buffer_is_cut_like_nutcrackers(
        run_pool, nodes: list[RedisProcess]):
    servers = [f"{nodes[0].address}:1 {'n' * 300}", f"{nodes[1].address}:1 b",
               f"{nodes[2].address}:1 a"]
    run = run_pool(servers, hash="md5")
    # every point string is cut to the same 272 bytes: 4 distinct points, 40 times each
    ring = build_ketama(run.pool.nodes)
    assert len({t for t, o in zip(ring.tokens, ring.owners, strict=True) if o == 0}) == 4
    keys = sample_keys()
    write_through(run.nutcracker, keys)
    assert_placed_as_predicted(run.pool, keys, where_keys_are(nodes), [0, 1, 2])


def test_a_server_on_port_11211_is_known_by_its_host_alone(run_pool, nodes: list[RedisProcess]):
    # No redis can be promised port 11211, so that server is a dead loopback address: keys
    # placed on it must fail, every other key must land where predicted.
    dead = "127.0.0.2"
    if port_accepts(dead, 11211):
        pytest.skip(f"something listens on {dead}:11211")
    assert twemproxy_name(NodeSpec(dead, 11211)) == dead.encode()
    servers = [f"{dead}:11211:1", f"{nodes[1].address}:1", f"{nodes[2].address}:1"]
    run = run_pool(servers, hash="md5")
    keys = [key for key in sample_keys() if key]
    replies = write_through(run.nutcracker, keys)
    placement = run.pool.placement()
    on_dead = [placement.node_index(key) == 0 for key in keys]
    assert 0 < sum(on_dead) < len(keys)
    assert [isinstance(reply, Exception) for reply in replies] == on_dead
    live = [key for key, dead_key in zip(keys, on_dead, strict=True) if not dead_key]
    assert_placed_as_predicted(run.pool, live, where_keys_are(nodes), [0, 1, 2])


def test_a_port_written_with_a_leading_zero_is_hashed_as_written(
        run_pool, nodes: list[RedisProcess]):
    servers = [f"{HOST}:0{nodes[0].port}:1", f"{nodes[1].address}:1", f"{nodes[2].address}:1"]
    run = run_pool(servers, hash="md5")
    assert twemproxy_name(run.pool.nodes[0]) == f"{HOST}:0{nodes[0].port}".encode()
    keys = sample_keys()
    write_through(run.nutcracker, keys)
    assert_placed_as_predicted(run.pool, keys, where_keys_are(nodes), [0, 1, 2])


# --- the continuum itself ---------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 3)])
def test_ketama_continuum_equals_uhashrings_ketama_ring(weights: tuple[int, ...]):
    # uhashring computes point counts with integers, nutcracker with floats: they agree here.
    names = ["cache-a", "cache-b", "cache-c"]
    nodes = [NodeSpec("127.0.0.1", 7001 + i, w, name)
             for i, (name, w) in enumerate(zip(names, weights, strict=True))]
    ring = build_ketama(nodes)
    theirs = HashRing({name: {"weight": w} for name, w in zip(names, weights, strict=True)},
                      hash_fn="ketama")
    assert [(t, names[o]) for t, o in zip(ring.tokens, ring.owners, strict=True)] == \
        theirs.get_points()


def test_ketama_points_per_server_follow_weight():
    nodes = [NodeSpec("127.0.0.1", 7001 + i, w) for i, w in enumerate((1, 2, 3))]
    owners = build_ketama(nodes).owners
    assert [owners.count(i) for i in range(3)] == [80, 160, 240]


def test_modula_repeats_each_server_by_weight_in_nutcrackers_order():
    nodes = [NodeSpec("127.0.0.1", 7001, 2, "gamma-long"), NodeSpec("127.0.0.1", 7002, 1, "alpha"),
             NodeSpec("127.0.0.1", 7003, 1, "beta")]
    assert build_modula(nodes).slots == [2, 1, 0, 0]


def test_random_distribution_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="random.*cannot be supported"):
        build_distribution("random", [NodeSpec("127.0.0.1", 7001)])


def test_modula_refuses_a_weight_too_large_to_tabulate():
    with pytest.raises(ValueError, match="total weight"):
        build_modula([NodeSpec("127.0.0.1", 7001, 1 << 30)])


def test_servers_sharing_a_name_are_refused():
    with pytest.raises(ValueError, match="share the name 'same'"):
        build_ketama([NodeSpec("127.0.0.1", 7001, 1, "same"),
                      NodeSpec("127.0.0.1", 7002, 1, "same")])


# --- config files: accepted and refused as nutcracker does ------------------------------------

GOOD_POOL = """\
redis_pool:
  listen: 127.0.0.1:22121
  hash: murmur
  distribution: modula
  hash_tag: "{}"
  timeout: 400
  redis: true
  redis_auth: s3cret
  redis_db: 0
  server_retry_timeout: 2000
  server_failure_limit: 3
  auto_eject_hosts: true
  servers:
   - 127.0.0.1:7001:1
   - 127.0.0.1:7002:2 second
   - localhost:7003:3
"""


def nutcracker_accepts(binary: str, text: str, tmp_path: Path) -> bool:
    path = tmp_path / "check.yml"
    path.write_text(text)
    return subprocess.run([binary, "-t", "-c", str(path)], capture_output=True,
                          timeout=10).returncode == 0


def test_a_pool_keeps_servers_weights_and_names_in_config_order(tmp_path: Path):
    path = tmp_path / "pool.yml"
    path.write_text(GOOD_POOL)
    pool = load_pool(path)
    assert [(n.host, n.port, n.weight, n.name) for n in pool.nodes] == [
        ("127.0.0.1", 7001, 1, None), ("127.0.0.1", 7002, 2, "second"), ("localhost", 7003, 3, None)]
    assert (pool.name, pool.listen, pool.hash, pool.distribution, pool.hash_tag) == (
        "redis_pool", "127.0.0.1:22121", "murmur", "modula", b"{}")
    assert (pool.timeout_ms, pool.redis_auth, pool.server_retry_timeout_ms,
            pool.server_failure_limit, pool.auto_eject_hosts, pool.redis) == (
        400, "s3cret", 2000, 3, True, True)


def test_directives_left_out_take_nutcrackers_defaults():
    pool = parse_pools("p:\n  listen: 127.0.0.1:22121\n  redis: true\n  servers:\n"
                       "   - 127.0.0.1:7001:1\n")["p"]
    assert (pool.hash, pool.distribution, pool.hash_tag, pool.timeout_ms, pool.redis_auth,
            pool.server_retry_timeout_ms, pool.server_failure_limit, pool.auto_eject_hosts) == (
        "fnv1a_64", "ketama", None, None, None, 30000, 2, False)


def test_the_placement_of_a_pool_uses_its_hash_distribution_and_tag():
    pool = parse_pools(GOOD_POOL)["redis_pool"]
    placement = pool.placement()
    assert placement.hash is HASH_FUNCTIONS["murmur"]
    assert placement.distribution == build_modula(pool.nodes)
    assert placement.node_index(b"{user1}:a") == placement.node_index(b"user1")


NUTCRACKER_REFUSES = {
    "unknown directive": GOOD_POOL.replace("  timeout: 400", "  timeout: 400\n  colour: blue"),
    "repeated directive": GOOD_POOL.replace("  timeout: 400", "  timeout: 400\n  timeout: 500"),
    "unknown hash": GOOD_POOL.replace("hash: murmur", "hash: xxh3"),
    "unknown distribution": GOOD_POOL.replace("distribution: modula", "distribution: maglev"),
    "hash tag of one character": GOOD_POOL.replace('hash_tag: "{}"', 'hash_tag: "{"'),
    "boolean spelled yes": GOOD_POOL.replace("auto_eject_hosts: true", "auto_eject_hosts: yes"),
    "negative number": GOOD_POOL.replace("timeout: 400", "timeout: -1"),
    "server without weight": GOOD_POOL.replace("127.0.0.1:7001:1", "127.0.0.1:7001"),
    "server of weight zero": GOOD_POOL.replace("127.0.0.1:7001:1", "127.0.0.1:7001:0"),
    "servers sharing a name": GOOD_POOL.replace("localhost:7003:3", "localhost:7003:3 second"),
    "no listen": GOOD_POOL.replace("  listen: 127.0.0.1:22121\n", ""),
    "no servers": GOOD_POOL.split("  servers:")[0],
    "two pools on one listen": GOOD_POOL + GOOD_POOL.replace("redis_pool:", "other:"),
}


@pytest.mark.parametrize("case", list(NUTCRACKER_REFUSES))
def test_a_config_nutcracker_refuses_is_refused(
        case: str, nutcracker_binary: str, tmp_path: Path):
    text = NUTCRACKER_REFUSES[case]
    assert not nutcracker_accepts(nutcracker_binary, text, tmp_path)
    with pytest.raises(ValueError):
        parse_pools(text)


def test_the_good_config_is_one_nutcracker_accepts(nutcracker_binary: str, tmp_path: Path):
    assert nutcracker_accepts(nutcracker_binary, GOOD_POOL, tmp_path)


CANNOT_SERVE = {
    "memcached pool by default": (GOOD_POOL.replace("  redis: true\n", "").replace(
        "  redis_auth: s3cret\n", ""), "memcached pool"),
    "unix-socket server": (GOOD_POOL.replace("127.0.0.1:7001:1", "/tmp/redis.sock:1"),
                           "unix-socket server"),
    "unix-socket listen": (GOOD_POOL.replace("listen: 127.0.0.1:22121",
                                             "listen: /tmp/ringleader-test.sock 0600"),
                           "unix socket"),
    "random distribution": (GOOD_POOL.replace("distribution: modula", "distribution: random"),
                            "random.*cannot be supported"),
}


@pytest.mark.parametrize("case", list(CANNOT_SERVE))
def test_a_pool_nutcracker_serves_but_ringleader_cannot_is_refused_clearly(
        case: str, nutcracker_binary: str, tmp_path: Path):
    text, reason = CANNOT_SERVE[case]
    assert nutcracker_accepts(nutcracker_binary, text, tmp_path)
    with pytest.raises(ValueError, match=reason):
        parse_pools(text)


MIXED = GOOD_POOL + """\
sessions:
  listen: 127.0.0.1:22122
  servers:
   - 127.0.0.1:11211:1
"""


def test_load_pool_without_a_name_needs_a_file_with_one_pool(tmp_path: Path):
    path = tmp_path / "mixed.yml"
    path.write_text(MIXED)
    with pytest.raises(ValueError, match=r"2 pools \(redis_pool .*sessions .*memcached"):
        load_pool(path)


def test_load_pool_takes_one_redis_pool_from_a_file_with_memcached_pools(tmp_path: Path):
    path = tmp_path / "mixed.yml"
    path.write_text(MIXED)
    assert load_pool(path, "redis_pool").name == "redis_pool"
    with pytest.raises(ValueError, match="memcached pool"):
        load_pools(path)


def test_load_pool_of_a_missing_name_lists_the_pools(tmp_path: Path):
    path = tmp_path / "mixed.yml"
    path.write_text(MIXED)
    with pytest.raises(ValueError, match="no pool 'nope'.*redis_pool.*sessions"):
        load_pool(path, "nope")


def test_the_example_config_is_valid_for_nutcracker_and_ringleader(
        nutcracker_binary: str, tmp_path: Path):
    assert nutcracker_accepts(nutcracker_binary, EXAMPLE.read_text(), tmp_path)
    pool = load_pool(EXAMPLE)
    assert (pool.distribution, pool.hash, pool.hash_tag) == ("ketama", "fnv1a_64", b"{}")
    assert [n.address for n in pool.nodes] == [f"127.0.0.1:{p}" for p in (7001, 7002, 7003)]
