"""The ``ringleader`` command line: up, serve from a config file, locate."""

from __future__ import annotations

import signal
import subprocess
import sys

from helpers import HOST, REPO, direct, node_list

from backends.local_nodes import free_port, port_accepts, redis_ping, wait_until
from router.config import load_toml


def ringleader(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "router", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def test_up_runs_local_nodes_and_the_proxy_until_ctrl_c(redis_server_binary):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "up", "--listen", f"{HOST}:{port}",
         "--base-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        start_new_session=True)
    try:
        try:
            wait_until(lambda: redis_ping(HOST, port), 20, "ringleader up", proc)
        except RuntimeError:
            raise AssertionError(proc.stdout.read()) from None
        banner = proc.stdout.readline() + proc.stdout.readline()
        assert f"redis-cli -h {HOST} -p {port}" in banner
        node_ports = [int(a.rsplit(":", 1)[1]) for a in banner.split("nodes: ")[1]
                      .splitlines()[0].split(", ")]
        assert len(node_ports) == 3
        assert all(port_accepts(HOST, p) for p in node_ports)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert not any(port_accepts(HOST, p) for p in node_ports)
        assert not port_accepts(HOST, port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_locate_prints_the_node_of_each_key():
    nodes = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    result = ringleader("locate", "--nodes", nodes, "user:1", "user:2", "{user:1}:cart")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("\t") for line in result.stdout.splitlines())
    assert set(lines) == {"user:1", "user:2", "{user:1}:cart"}
    assert lines["{user:1}:cart"] == lines["user:1"]
    assert all(v in nodes.split(",") for v in lines.values())


def test_serve_reads_nodes_weights_and_names_from_a_toml_file(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(2)
    path = tmp_path / "ringleader.toml"
    path.write_text(
        'hash_tag = "{}"\n'
        f'[[nodes]]\naddress = "{nodes[0].address}"\nname = "alpha"\nweight = 1\n'
        f'[[nodes]]\naddress = "{nodes[1].address}"\nname = "beta"\nweight = 3\n'
        "[timeouts]\nrequest_ms = 1500\n")
    proxy = make_proxy("--config", str(path))
    client = proxy.client()
    for i in range(400):
        client.set(f"t:{i}", i)
    placement = load_toml(path).placement()
    for i in range(400):
        key = f"t:{i}".encode()
        assert direct(nodes[placement.node_index(key)]).get(key) == str(i).encode()
    light, heavy = (direct(n).dbsize() for n in nodes)
    assert heavy > 2 * light  # weight 3 against weight 1


def test_a_bad_config_file_is_reported_with_the_setting_at_fault(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('nodes = ["127.0.0.1:7001"]\nlisten_on = "x"\n')
    result = ringleader("serve", "--config", str(path))
    assert result.returncode == 2
    assert "listen_on" in result.stderr


def test_serve_needs_exactly_one_node_source():
    result = ringleader("serve")
    assert result.returncode == 2
    assert "--nodes" in result.stderr


def test_commands_lists_how_each_command_is_served():
    result = ringleader("commands")
    assert result.returncode == 0
    table = dict(line.split("\t") for line in result.stdout.splitlines())
    assert table["get"] == "to the key's node"
    assert table["mget"] == "split per node, replies merged"
    assert table["ping"] == "proxy-local"


def test_node_list_in_serve_matches_locate(make_nodes, make_proxy):
    nodes = make_nodes(3)
    proxy = make_proxy("--nodes", node_list(nodes))
    proxy.client().set("where", "here")
    result = ringleader("locate", "--nodes", node_list(nodes), "where")
    address = result.stdout.split("\t")[1].strip()
    owner = next(n for n in nodes if n.address == address)
    assert direct(owner).get("where") == b"here"
