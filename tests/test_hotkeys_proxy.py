"""Hot keys through the proxy: detected, served from the near cache, never stale."""

from __future__ import annotations

import time

import pytest
from helpers import direct

from hotkeys.cache import NearCache
from router.config import from_node_list

HOT_CONFIG = """
[hotkeys]
window_ms = 100
threshold = 0.05
floor_ops = 1
cache_ttl_ms = {ttl}
"""


@pytest.fixture
def hot_proxy(make_proxy, three_nodes, nodes, tmp_path):
    def start(ttl: int = 60_000):
        path = tmp_path / "hot.toml"
        path.write_text("nodes = [" + ", ".join(f'"{n.address}"' for n in nodes) + "]\n"
                        + HOT_CONFIG.format(ttl=ttl))
        return make_proxy("--config", str(path))
    return start


def owner(nodes, key: str):
    placement = from_node_list(",".join(n.address for n in nodes)).placement()
    return nodes[placement.node_index(key.encode())]


def node_gets(node) -> int:
    return direct(node).info("commandstats").get("cmdstat_get", {}).get("calls", 0)


def make_hot(client, key: str, deadline: float = 15.0) -> None:
    """Read ``key`` (among colder keys) until the proxy caches it."""
    end = time.monotonic() + deadline
    i = 0
    while time.monotonic() < end:
        for _ in range(50):
            client.get(key)
        client.get(f"cold:{i}")
        i += 1
        info = client.info("hotkeys")
        rows = [v for k, v in info.items() if k.startswith("hot") and isinstance(v, dict)]
        if any(r.get("key") == key and r.get("mitigation") == "cache" for r in rows):
            return
    raise AssertionError(f"{key} never became a cached hot key: {client.info('hotkeys')}")


def test_a_read_hot_key_is_served_from_the_proxy(hot_proxy, nodes):
    client = hot_proxy().client()
    client.set("popular", "value")
    make_hot(client, "popular")
    before = node_gets(owner(nodes, "popular"))
    for _ in range(200):
        assert client.get("popular") == b"value"
    assert node_gets(owner(nodes, "popular")) - before <= 2  # at most a refill
    assert client.info("hotkeys")["cache_hits"] >= 198


def test_a_read_after_a_write_through_the_proxy_is_never_stale(hot_proxy):
    client = hot_proxy().client()
    client.set("counter", 0)
    make_hot(client, "counter")
    for i in range(1000):
        client.set("counter", i)
        assert client.get("counter") == str(i).encode()
    assert client.info("hotkeys")["cache_invalidations"] >= 1


def test_a_write_made_directly_on_the_node_reaches_readers_through_the_proxy(hot_proxy, nodes):
    client = hot_proxy(ttl=60_000).client()  # far beyond the test: only a report can refresh
    client.set("shared", "old")
    make_hot(client, "shared")
    assert client.get("shared") == b"old"
    direct(owner(nodes, "shared")).set("shared", "new")
    end = time.monotonic() + 5
    while client.get("shared") != b"new":
        assert time.monotonic() < end, "the direct write never invalidated the cache"
        time.sleep(0.005)


def test_hot_keys_are_listed_in_info_with_their_node(hot_proxy, nodes):
    client = hot_proxy().client()
    client.set("listed", 1)
    make_hot(client, "listed")
    rows = [v for k, v in client.info("hotkeys").items() if isinstance(v, dict)]
    row = next(r for r in rows if r["key"] == "listed")
    assert row["node"] == owner(nodes, "listed").address
    assert row["ops_per_sec"] > 0


def test_without_hotkeys_configured_nothing_is_cached(proxy):
    client = proxy.client()
    client.set("k", 1)
    for _ in range(500):
        client.get("k")
    assert client.info("hotkeys") == {"enabled": 0}


# ---------------------------------------------------------------- the cache alone


def test_cache_serves_an_entry_until_its_ttl():
    cache = NearCache(ttl=1.0)
    assert cache.put(("GET", "k"), b"k", b"$1\r\nv\r\n", cache.version(b"k"), now=0.0)
    assert cache.get(("GET", "k"), now=0.5) == b"$1\r\nv\r\n"
    assert cache.get(("GET", "k"), now=1.0) is None


def test_a_reply_that_raced_a_write_is_not_stored():
    cache = NearCache()
    version = cache.version(b"k")  # the read is sent
    cache.invalidate(b"k")  # a write is sent before the read's reply arrives
    assert not cache.put(("GET", "k"), b"k", b"$3\r\nold\r\n", version, now=0.0)
    assert cache.get(("GET", "k"), now=0.0) is None


def test_invalidation_drops_every_entry_of_the_key():
    cache = NearCache()
    for entry in [("GET", "k"), ("STRLEN", "k")]:
        cache.put(entry, b"k", b":1\r\n", cache.version(b"k"), now=0.0)
    cache.invalidate(b"k")
    assert len(cache) == 0 and cache.bytes == 0


def test_cache_memory_is_bounded():
    cache = NearCache(max_entries=10, max_bytes=10_000)
    for i in range(100):
        key = b"k%d" % i
        cache.put(("GET", key), key, b"x" * 100, cache.version(key), now=0.0)
    assert len(cache) == 10
    assert cache.bytes <= 10_000


def test_clear_refuses_replies_read_before_it():
    cache = NearCache()
    version = cache.version(b"k")
    cache.clear()
    assert not cache.put(("GET", "k"), b"k", b":1\r\n", version, now=0.0)


def test_forgetting_versions_never_lets_an_old_read_in():
    cache = NearCache(max_entries=2)
    old = cache.version(b"target")
    cache.invalidate(b"target")
    for i in range(20):  # enough invalidations to reset the version table
        cache.invalidate(b"other%d" % i)
    assert not cache.put(("GET", "target"), b"target", b":1\r\n", old, now=0.0)


def test_errors_are_never_cached():
    cache = NearCache()
    assert not cache.put(("GET", "k"), b"k", b"-WRONGTYPE\r\n", cache.version(b"k"), now=0.0)


SPLIT_CONFIG = """
[hotkeys]
window_ms = 100
threshold = 0.05
floor_ops = 1
sample_every = 1
cool_windows = 2
[[hotkeys.rules]]
pattern = "counter:*"
mitigation = "split"
split = 3
"""


@pytest.fixture
def split_proxy(make_proxy, three_nodes, nodes, tmp_path):
    path = tmp_path / "split.toml"
    path.write_text("nodes = [" + ", ".join(f'"{n.address}"' for n in nodes) + "]\n"
                    + SPLIT_CONFIG)
    return make_proxy("--config", str(path))


def incrs(node) -> int:
    stats = direct(node).info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("incr", "incrby"))


def wait_split(client, key: str) -> None:
    end = time.monotonic() + 15
    while time.monotonic() < end:
        for _ in range(100):
            client.incr(key)
        rows = [v for k, v in client.info("hotkeys").items() if isinstance(v, dict)]
        if any(r.get("key") == key and str(r.get("mitigation", "")).startswith("split over")
               for r in rows):
            return
    raise AssertionError(f"{key} was never split: {client.info('hotkeys')}")


def test_a_split_counter_spreads_increments_and_sums_exactly(split_proxy, nodes):
    import threading

    client = split_proxy.client()
    wait_split(client, "counter:views")
    base = int(client.get("counter:views"))
    before = [incrs(n) for n in nodes]

    def hammer() -> None:
        mine = split_proxy.client()
        for _ in range(500):
            mine.incr("counter:views")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(client.get("counter:views")) == base + 2000  # no increment lost
    spread = [incrs(n) - b for n, b in zip(nodes, before, strict=True)]
    assert sum(1 for s in spread if s > 200) >= 2, spread  # more than one node took them
    assert not [k for k in client.scan_iter("*rlsplit*")]  # the parts stay hidden


def test_a_split_counter_is_folded_back_when_it_cools(split_proxy, nodes):
    client = split_proxy.client()
    wait_split(client, "counter:cooling")
    total = int(client.get("counter:cooling"))
    end = time.monotonic() + 20  # stop incrementing: it cools, its parts fold into the key
    while time.monotonic() < end:
        client.get("other")
        parts = sum(len(direct(n).keys("{rlsplit-*")) for n in nodes)
        if parts == 0 and "counter:cooling" not in str(client.info("hotkeys")):
            break
        time.sleep(0.05)
    assert sum(len(direct(n).keys("{rlsplit-*")) for n in nodes) == 0
    owner_value = sum(int(direct(n).get("counter:cooling") or 0) for n in nodes)
    assert owner_value == total


REPLICATE_CONFIG = """
[hotkeys]
window_ms = 100
threshold = 0.05
floor_ops = 1
sample_every = 1
[[hotkeys.rules]]
pattern = "popular:*"
mitigation = "replicate"
copies = 2
"""


@pytest.fixture
def replicate_proxy(make_proxy, three_nodes, nodes, tmp_path):
    path = tmp_path / "replicate.toml"
    path.write_text("nodes = [" + ", ".join(f'"{n.address}"' for n in nodes) + "]\n"
                    + REPLICATE_CONFIG)
    return make_proxy("--config", str(path))


def wait_replicated(client, key: str) -> None:
    end = time.monotonic() + 15
    while time.monotonic() < end:
        for _ in range(100):
            client.get(key)
        rows = [v for k, v in client.info("hotkeys").items() if isinstance(v, dict)]
        if any(r.get("key") == key and "active" in str(r.get("mitigation")) for r in rows):
            return
    raise AssertionError(f"{key} was never replicated: {client.info('hotkeys')}")


def test_reads_of_a_replicated_key_are_spread_over_its_copies(replicate_proxy, nodes):
    client = replicate_proxy.client()
    client.set("popular:item", "x" * 100, ex=3600)
    wait_replicated(client, "popular:item")
    before = [node_gets(n) for n in nodes]
    for _ in range(300):
        assert client.get("popular:item") == b"x" * 100
    spread = [node_gets(n) - b for n, b in zip(nodes, before, strict=True)]
    assert sum(1 for s in spread if s >= 50) == 3, spread  # owner and both copies
    copies = [k for n in nodes for k in direct(n).keys("{rlcopy-*")]
    assert len(copies) == 2
    assert all(0 < direct(n).ttl(k) <= 3600 for n in nodes for k in direct(n).keys("{rlcopy-*"))
    assert not list(client.scan_iter("*rlcopy*"))  # copies stay hidden


def test_a_replicated_key_is_never_stale_after_a_write(replicate_proxy):
    client = replicate_proxy.client()
    client.set("popular:counter", 0)
    wait_replicated(client, "popular:counter")
    for i in range(1000):
        client.set("popular:counter", i)
        for _ in range(2):
            assert client.get("popular:counter") == str(i).encode()


def test_a_write_on_the_node_stops_stale_copies_from_serving(replicate_proxy, nodes):
    client = replicate_proxy.client()
    client.set("popular:shared", "old")
    wait_replicated(client, "popular:shared")
    direct(owner(nodes, "popular:shared")).set("popular:shared", "new")
    end = time.monotonic() + 5
    while True:  # within the report delay, every read sees the new value
        values = {client.get("popular:shared") for _ in range(10)}
        if values == {b"new"}:
            break
        assert time.monotonic() < end, values
