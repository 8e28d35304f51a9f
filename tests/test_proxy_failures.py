"""Bad input, dead or hung nodes, greedy clients: a clear error, and everyone else served."""

from __future__ import annotations

import signal
import socket
import time

import pytest
import redis
from helpers import HOST, node_list, raw_exchange

from backends.local_nodes import start_redis
from router.config import from_node_list


def write_config(tmp_path, nodes, extra: str = "") -> str:
    lines = ['nodes = [' + ", ".join(f'"{n.address}"' for n in nodes) + "]", extra]
    path = tmp_path / "ringleader.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def key_on(nodes, index: int, prefix: str = "k") -> str:
    placement = from_node_list(node_list(nodes)).placement()
    return next(f"{prefix}:{i}" for i in range(10_000)
                if placement.node_index(f"{prefix}:{i}".encode()) == index)


def eventually(check, timeout: float = 10.0, what: str = "condition"):
    """Poll ``check`` until it returns a true value (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # keep polling; report the last failure
            last = exc
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen in {timeout}s (last error: {last!r})")


def test_dead_node_fails_fast_with_an_error_naming_it(make_nodes, make_proxy):
    nodes = make_nodes(3)
    proxy = make_proxy("--nodes", node_list(nodes))
    client = proxy.client()
    dead_key, live_key = key_on(nodes, 1), key_on(nodes, 0)
    client.set(dead_key, "v")
    address = nodes[1].address
    nodes[1].stop()

    def refused() -> bool:
        with pytest.raises(redis.ResponseError) as info:
            client.get(dead_key)
        return address in str(info.value)

    eventually(refused, what="an error naming the dead node")
    assert client.set(live_key, "still served") is True
    assert client.get(live_key) == b"still served"


def test_proxy_reconnects_when_a_node_comes_back(make_nodes, make_proxy):
    nodes = make_nodes(2)
    proxy = make_proxy("--nodes", node_list(nodes))
    client = proxy.client()
    key = key_on(nodes, 1)
    port = nodes[1].port
    nodes[1].stop()
    eventually(lambda: pytest.raises(redis.ResponseError, client.get, key), what="node down")
    replacement = start_redis(port)
    try:
        eventually(lambda: client.set(key, "back") is True, what="reconnect")
        assert client.get(key) == b"back"
    finally:
        replacement.stop()


def test_hung_node_times_out_and_other_nodes_keep_working(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(2)
    config = write_config(tmp_path, nodes, "[timeouts]\nrequest_ms = 300")
    proxy = make_proxy("--config", config)
    client = proxy.client()
    hung_key, live_key = key_on(nodes, 1), key_on(nodes, 0)
    nodes[1].proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(redis.ResponseError, match=f"{nodes[1].address}.*timed out"):
            client.get(hung_key)
        assert client.set(live_key, "fine") is True
    finally:
        nodes[1].proc.send_signal(signal.SIGCONT)
    eventually(lambda: client.set(hung_key, "recovered") is True, what="recovery")


def test_malformed_request_gets_a_protocol_error_and_only_that_connection_closes(proxy):
    reply = raw_exchange(proxy.port, b"*1\r\n$abc\r\n", 2)
    assert reply.startswith(b"-ERR Protocol error")
    assert proxy.client().ping() is True


def test_connection_closes_after_a_protocol_error(proxy):
    with socket.create_connection((HOST, proxy.port), timeout=5) as s:
        s.sendall(b"*1\r\n$abc\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"-ERR Protocol error")


def test_oversized_bulk_is_refused_before_its_payload_arrives(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(1)
    proxy = make_proxy("--config", write_config(tmp_path, nodes, "[limits]\nmax_bulk_bytes = 1000"))
    # only the header is sent: the refusal cannot have waited for 100 MB of payload
    reply = raw_exchange(proxy.port, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000000\r\n")
    assert reply.startswith(b"-ERR Protocol error: bulk length 100000000 over the limit")
    assert proxy.client().set("k", "x" * 900) is True


def test_too_many_arguments_are_refused(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(1)
    proxy = make_proxy("--config", write_config(tmp_path, nodes, "[limits]\nmax_args = 100"))
    reply = raw_exchange(proxy.port, b"*5000\r\n")
    assert reply.startswith(b"-ERR Protocol error: request has 5000 arguments")


def flood_without_reading(port: int, key: str) -> socket.socket:
    """A client that pipelines GETs until its socket is full and never reads a reply."""
    greedy = socket.create_connection((HOST, port))
    greedy.setblocking(False)
    request = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key.encode())
    try:
        for _ in range(100_000):
            greedy.send(request * 64)
    except BlockingIOError:
        pass
    return greedy


def test_client_that_never_reads_its_replies_does_not_hold_up_others(make_nodes, make_proxy,
                                                                      tmp_path):
    nodes = make_nodes(2)
    proxy = make_proxy("--config", write_config(tmp_path, nodes, "[limits]\nmax_pending = 64"))
    client = proxy.client()
    client.set("big", b"x" * 100_000)
    greedy = flood_without_reading(proxy.port, "big")
    try:
        for i in range(100):
            assert client.set(f"other:{i}", i) is True
            assert client.get(f"other:{i}") == str(i).encode()
    finally:
        greedy.close()


def test_client_over_its_output_limit_is_disconnected(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(1)
    config = write_config(tmp_path, nodes, "[limits]\nmax_output_bytes = 2000000")
    proxy = make_proxy("--config", config)
    proxy.client().set("big", b"x" * 100_000)
    greedy = flood_without_reading(proxy.port, "big")
    try:
        watcher = proxy.client()
        # without reading anything, the greedy client is dropped once its unread replies
        # pass the limit
        eventually(lambda: watcher.info("clients")["connected_clients"] == 1,
                   what="greedy client disconnected")
    finally:
        greedy.close()
    assert proxy.client().ping() is True


def test_connections_over_max_clients_get_an_error(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(1)
    proxy = make_proxy("--config", write_config(tmp_path, nodes, "[limits]\nmax_clients = 2"))
    held: list[socket.socket] = []

    def hold_one_more() -> bool:
        s = socket.create_connection((HOST, proxy.port), timeout=5)
        s.sendall(b"PING\r\n")
        if s.recv(100) == b"+PONG\r\n":
            held.append(s)
        else:  # the readiness probe's connection may not be gone yet
            s.close()
        return len(held) == 2

    try:
        eventually(hold_one_more, what="two clients connected")
        assert raw_exchange(proxy.port, b"PING\r\n") == b"-ERR max number of clients reached\r\n"
        assert held[0].send(b"PING\r\n") and held[0].recv(100) == b"+PONG\r\n"
    finally:
        for s in held:
            s.close()


def node_requests(proxy) -> int:
    return proxy.client().info("nodes")["node0"]["requests"]


def test_sigterm_finishes_requests_in_flight_then_exits_zero(make_nodes, make_proxy):
    nodes = make_nodes(1)
    proxy = make_proxy("--nodes", node_list(nodes))
    proxy.client().set("slow", "answer")
    nodes[0].proc.send_signal(signal.SIGSTOP)  # the node holds the reply back
    with socket.create_connection((HOST, proxy.port), timeout=10) as s:
        before = node_requests(proxy)
        s.sendall(b"*2\r\n$3\r\nGET\r\n$4\r\nslow\r\n")
        eventually(lambda: node_requests(proxy) > before, what="request in flight")
        proxy.proc.send_signal(signal.SIGTERM)
        nodes[0].proc.send_signal(signal.SIGCONT)
        assert s.recv(100) == b"$6\r\nanswer\r\n"
    assert proxy.proc.wait(10) == 0
