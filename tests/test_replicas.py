"""Shards with replicas: read policies and write acknowledgement levels over real Redis
replication."""

from __future__ import annotations

import signal

import pytest
import redis
from helpers import direct

from backends.local_nodes import RedisOptions, wait_until


def replication_up(replica) -> bool:
    return direct(replica).info("replication").get("master_link_status") == "up"


@pytest.fixture
def shard(make_nodes):
    """One shard: a primary and a replica, replication up."""
    primary = make_nodes(1)[0]
    replica = make_nodes(1, options=RedisOptions(replicaof=primary.address))[0]
    wait_until(lambda: replication_up(replica), 20, "replication link")
    return primary, replica


def proxy_for(make_proxy, tmp_path, primary, replica, extra: str = ""):
    path = tmp_path / "replicas.toml"
    path.write_text(f'{extra}\n[[nodes]]\naddress = "{primary.address}"\n'
                    f'replicas = ["{replica.address}"]\n')
    proxy = make_proxy("--config", str(path))
    client = proxy.client()
    wait_until(lambda: "/up" in client.info("nodes")["node0"].get("replicas", ""), 10,
               "the proxy's replica connection")
    return proxy


def gets(node) -> int:
    return direct(node).info("commandstats").get("cmdstat_get", {}).get("calls", 0)


def test_primary_read_policy_reads_only_from_the_primary(make_proxy, tmp_path, shard):
    primary, replica = shard
    client = proxy_for(make_proxy, tmp_path, primary, replica, 'read_policy = "primary"').client()
    client.set("k", "v")
    for _ in range(50):
        assert client.get("k") == b"v"
    assert gets(primary) >= 50
    assert gets(replica) == 0


def test_prefer_replica_spreads_reads_to_the_replica(make_proxy, tmp_path, shard):
    primary, replica = shard
    proxy = proxy_for(make_proxy, tmp_path, primary, replica,
                      'read_policy = "prefer-replica"\nread_your_writes_ms = 0')
    direct(primary).set("k", "v")
    wait_until(lambda: direct(replica).get("k") == b"v", 10, "replicated")
    client = proxy.client()
    for _ in range(50):
        assert client.get("k") == b"v"
    assert gets(replica) >= 50
    assert gets(primary) == 0


def test_read_your_writes_holds_under_prefer_replica(make_proxy, tmp_path, shard):
    primary, replica = shard
    proxy = proxy_for(make_proxy, tmp_path, primary, replica,
                      'read_policy = "prefer-replica"\nread_your_writes_ms = 5000')
    client = proxy.client()
    replica_node = direct(replica)
    replica_node.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # the replica lags
    try:
        for i in range(20):
            client.set("counter", i)
            assert client.get("counter") == str(i).encode()  # never stale for the writer
    finally:
        replica_node.execute_command("CLIENT", "UNPAUSE")
    assert gets(replica) == 0


def test_replicas_1_reports_an_error_when_the_replica_cannot_confirm(make_proxy, tmp_path,
                                                                     shard):
    primary, replica = shard
    # a generous timeout: a loaded machine can delay the replica's acknowledgement
    proxy = proxy_for(make_proxy, tmp_path, primary, replica,
                      'write_ack = "replicas:1"\nack_timeout_ms = 2000\n'
                      '[timeouts]\nrequest_ms = 5000')
    client = proxy.client()
    assert client.set("durable", 1) is True  # the replica confirms
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="only 0 of 1 replicas"):
            client.set("durable", 2)
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: client.set("durable", 3) is True, 10, "replica back")


def test_acknowledgement_applies_to_split_writes(make_proxy, tmp_path, shard):
    primary, replica = shard
    proxy = proxy_for(make_proxy, tmp_path, primary, replica,
                      'write_ack = "replicas:1"\nack_timeout_ms = 2000\n'
                      '[timeouts]\nrequest_ms = 5000')
    client = proxy.client()
    assert client.mset({"a": 1, "b": 2}) is True
    assert direct(replica).mget("a", "b") == [b"1", b"2"]  # on the replica before the OK


def test_policies_apply_per_key_pattern(make_proxy, tmp_path, shard):
    primary, replica = shard
    extra = ('read_your_writes_ms = 0\n'
             '[[policies]]\npattern = "cache:*"\nread_policy = "prefer-replica"\n')
    path = tmp_path / "p.toml"
    path.write_text(extra + f'[[nodes]]\naddress = "{primary.address}"\n'
                    f'replicas = ["{replica.address}"]\n')
    client = make_proxy("--config", str(path)).client()
    wait_until(lambda: "/up" in client.info("nodes")["node0"].get("replicas", ""), 10,
               "the proxy's replica connection")
    direct(primary).mset({"cache:x": 1, "user:x": 1})
    wait_until(lambda: direct(replica).get("user:x") == b"1", 10, "replicated")
    on_replica, on_primary = gets(replica), gets(primary)
    for _ in range(10):
        client.get("cache:x")
        client.get("user:x")
    assert gets(replica) - on_replica == 10
    assert gets(primary) - on_primary == 10


def test_fsync_acknowledgement_is_refused_at_startup_without_waitaof(make_nodes, tmp_path):
    import subprocess
    import sys

    from helpers import REPO

    node = make_nodes(1)[0]
    path = tmp_path / "fsync.toml"
    path.write_text(f'write_ack = "fsync"\nnodes = ["{node.address}"]\n')
    result = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=30)
    version = direct(node).info("server")["redis_version"]
    if tuple(int(x) for x in version.split(".")[:2]) >= (7, 2):
        pytest.skip("this redis-server supports WAITAOF")
    assert result.returncode == 2
    assert "WAITAOF" in result.stderr and node.address in result.stderr


def test_a_bad_policy_is_a_config_error(tmp_path):
    from router.config import ConfigError, from_mapping

    with pytest.raises(ConfigError, match="write_ack"):
        from_mapping({"nodes": ["127.0.0.1:1"], "write_ack": "replicas:0"})
    with pytest.raises(ConfigError, match="read_policy"):
        from_mapping({"nodes": ["127.0.0.1:1"], "read_policy": "nearest"})
