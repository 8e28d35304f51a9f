"""Online rebalancing through the proxy, under load, with the consistency checker: nothing
acknowledged is lost, nothing deleted comes back, no stale read, TTLs kept."""

from __future__ import annotations

import json
import signal

import pytest
import redis
from helpers import HOST, admin, direct, wait_migrations
from helpers import write_state_dir_config as write_config

from backends.local_nodes import RedisOptions, free_port, redis_ping, start_redis, wait_until
from bench.consistency import Workload, prefill, verify

KEYS = 20_000


def assert_consistent(report) -> None:
    assert report.ok, report.summary()
    assert report.keys_checked > 0


def test_add_node_under_load_loses_nothing_and_moves_a_fair_share(make_nodes, make_proxy,
                                                                  tmp_path):
    nodes = make_nodes(4)
    proxy = make_proxy("--config", write_config(tmp_path, nodes[:3]))
    keyspace = prefill(proxy.address, KEYS)
    with Workload(proxy.address, clients=6, keyspace=keyspace, prefilled=True) as work:
        work.wait_until(lambda: work.acknowledged() > 2000, 30)
        started = admin(proxy, "ADD-NODE", nodes[3].address)
        assert started["migrations"]
        migrations = wait_migrations(proxy)
        record = work.stop()
    assert all(m["state"] == "done" for m in migrations), migrations
    report = verify(proxy.address, record)
    assert_consistent(report)
    sizes = [direct(n).dbsize() for n in nodes]
    moved_share = sizes[3] / sum(sizes)
    assert abs(moved_share - 1 / 4) <= 0.1 * (1 / 4), sizes  # within 10% of 1/(n+1)
    print(f"add-node: {moved_share:.3f} of the keys moved; client errors: {report.errors}")


def test_remove_node_drains_it_and_drops_it_from_the_topology(make_nodes, make_proxy,
                                                                tmp_path):
    nodes = make_nodes(4)
    proxy = make_proxy("--config", write_config(tmp_path, nodes))
    keyspace = prefill(proxy.address, KEYS)
    with Workload(proxy.address, clients=6, keyspace=keyspace, prefilled=True) as work:
        work.wait_until(lambda: work.acknowledged() > 2000, 30)
        admin(proxy, "REMOVE-NODE", nodes[3].address)
        wait_migrations(proxy)
        wait_until(lambda: len(admin(proxy, "STATUS")["shards"]) == 3, 30, "shard removed")
        record = work.stop()
    assert_consistent(verify(proxy.address, record))
    assert direct(nodes[3]).dbsize() == 0


def test_rebalance_evens_out_a_skewed_ring(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(3)
    proxy = make_proxy("--config", write_config(tmp_path, nodes))
    keyspace = prefill(proxy.address, KEYS)
    status = admin(proxy, "STATUS")
    # skew it: move a third of one shard's arcs to another
    topology_arcs = _arcs_of(tmp_path, status["shards"][0]["id"])
    admin(proxy, "MOVE", ",".join(str(t) for t in topology_arcs[: len(topology_arcs) // 3]),
          nodes[1].address)
    wait_migrations(proxy)
    before = [direct(n).dbsize() for n in nodes]
    with Workload(proxy.address, clients=4, keyspace=keyspace, prefilled=True) as work:
        work.wait_until(lambda: work.acknowledged() > 1000, 30)
        plan = admin(proxy, "REBALANCE", "TARGET", "1.10", "CHURN", "0.3")
        assert plan["migrations"], plan
        wait_migrations(proxy)
        record = work.stop()
    assert_consistent(verify(proxy.address, record))
    after = [direct(n).dbsize() for n in nodes]
    assert max(after) / (sum(after) / 3) < max(before) / (sum(before) / 3)


def _arcs_of(tmp_path, shard_id: str) -> list[int]:
    from rebalancer.store import StateDirStore

    topology = StateDirStore(tmp_path / "state").load()
    return [end for _, end, _ in topology.arcs_of(shard_id)]


def test_a_move_resumes_and_finishes_after_the_proxy_is_killed(make_nodes, make_proxy,
                                                               tmp_path):
    nodes = make_nodes(4)
    config = write_config(tmp_path, nodes[:3], "[migration]\nkeys_per_sec = 2000\n")
    port = free_port()
    proxy = make_proxy("--config", config, port=port)
    keyspace = prefill(proxy.address, KEYS)
    with Workload(proxy.address, clients=4, keyspace=keyspace, prefilled=True) as work:
        work.wait_until(lambda: work.acknowledged() > 1000, 30)
        admin(proxy, "ADD-NODE", nodes[3].address)
        wait_until(lambda: direct(nodes[3]).dbsize() > 200, 30, "the move under way")
        proxy.proc.send_signal(signal.SIGKILL)
        proxy.proc.wait()
        restarted = make_proxy("--config", config, port=port)  # the same state dir
        migrations = wait_migrations(restarted)
        record = work.stop()
    assert all(m["state"] == "done" for m in migrations), migrations
    report = verify(restarted.address, record)
    assert_consistent(report)
    status = admin(restarted, "STATUS")
    assert len(status["shards"]) == 4 and not status["migrations"] or all(
        m["state"] == "done" for m in status["migrations"])
    print(f"proxy killed during a move: client errors {report.errors}")


def test_a_move_survives_the_target_node_restarting(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(3)
    durable = RedisOptions(extra=("--appendonly", "yes", "--appendfsync", "always"))
    target = start_redis(options=durable)  # a restart loses nothing it acknowledged
    try:
        config = write_config(tmp_path, nodes, "[migration]\nkeys_per_sec = 3000\n")
        proxy = make_proxy("--config", config)
        keyspace = prefill(proxy.address, KEYS // 2)
        with Workload(proxy.address, clients=4, keyspace=keyspace, prefilled=True) as work:
            admin(proxy, "ADD-NODE", target.address)
            wait_until(lambda: direct(target).dbsize() > 100, 30, "the move under way")
            port, workdir = target.port, target.workdir
            target.kill()
            target = start_redis(port, workdir=workdir, options=durable)  # replays its AOF
            migrations = wait_migrations(proxy)
            record = work.stop()
        assert all(m["state"] == "done" for m in migrations), migrations
        report = verify(proxy.address, record)
        assert_consistent(report)
        print(f"target restarted during a move: client errors {report.errors}")
    finally:
        target.stop()


def test_a_restarted_proxy_serves_the_stored_topology_not_its_flags(make_nodes, make_proxy,
                                                                   tmp_path):
    nodes = make_nodes(4)
    state = tmp_path / "state"
    first = make_proxy("--nodes", ",".join(n.address for n in nodes[:3]), "--state-dir",
                       str(state))
    admin(first, "ADD-NODE", nodes[3].address)
    wait_migrations(first)
    first.stop()
    second = make_proxy("--nodes", ",".join(n.address for n in nodes[:2]), "--state-dir",
                        str(state))
    assert len(admin(second, "STATUS")["shards"]) == 4


def test_cancel_moves_the_keys_back(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(4)
    config = write_config(tmp_path, nodes[:3], "[migration]\nkeys_per_sec = 1000\n")
    proxy = make_proxy("--config", config)
    keyspace = prefill(proxy.address, KEYS // 2)
    with Workload(proxy.address, clients=4, keyspace=keyspace, prefilled=True) as work:
        started = admin(proxy, "ADD-NODE", nodes[3].address)
        wait_until(lambda: direct(nodes[3]).dbsize() > 100, 30, "the move under way")
        for mid in started["migrations"]:
            try:
                admin(proxy, "CANCEL", str(mid))
            except redis.ResponseError:
                pass  # already finished
        migrations = wait_migrations(proxy)
        record = work.stop()
    assert any(m["state"] == "cancelled" for m in migrations)
    assert_consistent(verify(proxy.address, record))
    assert direct(nodes[3]).dbsize() == 0  # everything went back


def test_keys_too_big_to_move_in_time_are_reported(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(2)
    config = write_config(tmp_path, nodes[:1], "[migration]\nmigrate_timeout_ms = 1\n")
    proxy = make_proxy("--config", config)
    client = proxy.client()
    big = b"x" * (16 * 1024 * 1024)  # a node restores this in far more than 1 ms
    for i in range(16):  # about half move to the new node; none with odds of 1 in 65,536
        client.set(f"huge:{i}", big)
    admin(proxy, "ADD-NODE", nodes[1].address)
    migrations = wait_migrations(proxy, timeout=180)
    failed = [m for m in migrations if m["state"] == "failed"]
    assert failed and any(m["too_big"] for m in failed), migrations
    assert "could not be moved" in failed[0]["message"]


def test_admin_commands_need_the_admin_password_when_set(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(1)
    proxy = make_proxy("--nodes", nodes[0].address, "--admin-password", "adm1n")
    client = proxy.client(protocol=2)
    with pytest.raises(redis.exceptions.AuthenticationError, match="RINGLEADER AUTH"):
        client.execute_command("RINGLEADER", "STATUS")
    with redis.Redis(host=HOST, port=proxy.port, protocol=2, single_connection_client=True) as c:
        assert c.execute_command("RINGLEADER", "AUTH", "adm1n") in (b"OK", True)
        assert json.loads(c.execute_command("RINGLEADER", "STATUS"))["epoch"] >= 1
    assert redis_ping(HOST, proxy.port)


def test_the_admin_cli_adds_a_node_and_waits_for_the_move(make_nodes, make_proxy, tmp_path):
    import subprocess
    import sys

    from helpers import REPO

    nodes = make_nodes(3)
    proxy = make_proxy("--config", write_config(tmp_path, nodes[:2]))
    prefill(proxy.address, 2000)

    def admin_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "router", "admin", "--proxy", proxy.address,
                               *args], capture_output=True, text=True, cwd=REPO, timeout=120)

    status = admin_cli("status")
    assert status.returncode == 0, status.stderr
    assert nodes[0].address in status.stdout
    added = admin_cli("add-node", nodes[2].address, "--wait")
    assert added.returncode == 0, added.stderr
    assert direct(nodes[2]).dbsize() > 0
    listed = json.loads(admin_cli("status", "--json").stdout)
    assert len(listed["shards"]) == 3


def test_no_key_moves_until_every_proxy_has_the_new_epoch(make_nodes, make_proxy, tmp_path):
    import threading

    nodes = make_nodes(3)
    config = write_config(tmp_path, nodes[:2])
    a = make_proxy("--config", config)
    b = make_proxy("--config", config)  # a second proxy on the same state dir
    a.client().mset({f"b:{i}": i for i in range(2000)})
    b.proc.send_signal(signal.SIGSTOP)  # it cannot acknowledge the moving epoch
    try:
        admin(a, "MOVE", ",".join(str(t) for t in _arcs_of(tmp_path, nodes[0].address)[:50]),
              nodes[1].address)
        moving = next(f"b:{i}" for i in range(2000) if _in_moving_arc(tmp_path, f"b:{i}"))
        got = {}

        def read() -> None:
            try:
                got["v"] = a.client().get(moving)
            except Exception as exc:  # shown by the assertion below
                got["error"] = f"{type(exc).__name__}: {exc}"

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(1.0)
        assert reader.is_alive(), "the read went ahead before the barrier"
        assert direct(nodes[0]).exists(moving) == 1  # still on the source
    finally:
        b.proc.send_signal(signal.SIGCONT)
    reader.join(15)
    assert got.get("v") == moving.split(":")[1].encode(), got
    wait_migrations(a)


def _in_moving_arc(tmp_path, key: str) -> bool:
    from rebalancer.store import StateDirStore

    topology = StateDirStore(tmp_path / "state").load()
    return topology.placement().node_index(key.encode()) < 0
