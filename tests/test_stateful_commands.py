"""Transactions and blocking commands: state that lives on a connection, on a sharded
keyspace."""

from __future__ import annotations

import threading

import pytest
import redis
from helpers import direct

from router.config import from_node_list


def keys_on(nodes, same: bool, prefix: str = "t") -> tuple[str, str]:
    """Two keys on the same node, or on different nodes."""
    placement = from_node_list(",".join(n.address for n in nodes)).placement()
    a = f"{prefix}:0"
    home = placement.node_index(a.encode())
    b = next(f"{prefix}:{i}" for i in range(1, 1000)
             if (placement.node_index(f"{prefix}:{i}".encode()) == home) == same)
    return a, b


def test_transaction_on_one_node_runs_atomically(proxy):
    client = proxy.client()
    pipe = client.pipeline(transaction=True)
    pipe.set("{acct}:a", 100)
    pipe.incrby("{acct}:a", 5)
    pipe.set("{acct}:b", "x")
    pipe.get("{acct}:a")
    assert pipe.execute() == [True, 105, True, b"105"]


def test_transaction_across_nodes_is_refused_at_queue_time_and_aborted(proxy, nodes):
    a, b = keys_on(nodes, same=False)
    client = proxy.client(protocol=2)
    pipe = client.pipeline(transaction=True)
    pipe.set(a, 1)
    pipe.set(b, 2)
    with pytest.raises((redis.exceptions.ExecAbortError, redis.exceptions.ClusterCrossSlotError)):
        pipe.execute()  # redis-py reports the queue-time error, the proxy then EXECABORT
    assert client.exists(a, b) == 0  # nothing ran


def test_queue_time_error_reply_names_the_pinned_node(proxy, nodes):
    from helpers import raw_exchange

    a, b = keys_on(nodes, same=False)
    payload = (b"MULTI\r\nSET %s 1\r\nSET %s 2\r\nEXEC\r\n" % (a.encode(), b.encode()))
    reply = raw_exchange(proxy.port, payload, 4)
    parts = reply.split(b"\r\n")
    assert parts[0] == b"+OK" and parts[1] == b"+QUEUED"
    assert parts[2].startswith(b"-CROSSSLOT") and b"pinned" in parts[2]
    assert parts[3].startswith(b"-EXECABORT")


def test_discard_drops_the_queued_commands(proxy):
    from helpers import raw_exchange

    reply = raw_exchange(proxy.port, b"MULTI\r\nSET dropped 1\r\nDISCARD\r\nGET dropped\r\n", 4)
    assert reply == b"+OK\r\n+QUEUED\r\n+OK\r\n$-1\r\n"


def test_exec_without_multi_is_an_error(proxy):
    with pytest.raises(redis.ResponseError, match="EXEC without MULTI"):
        proxy.client(protocol=2).execute_command("EXEC")


def test_nested_multi_is_an_error_but_keeps_the_transaction(proxy):
    from helpers import raw_exchange

    reply = raw_exchange(proxy.port, b"MULTI\r\nMULTI\r\nSET n:a 1\r\nEXEC\r\n", 4)
    assert reply == (b"+OK\r\n-ERR MULTI calls can not be nested\r\n+QUEUED\r\n"
                     b"*1\r\n+OK\r\n")


def test_watch_aborts_the_transaction_when_a_watched_key_changes(proxy):
    client = proxy.client()
    other = proxy.client()
    client.set("{w}:balance", 10)
    with client.pipeline(transaction=True) as pipe:
        pipe.watch("{w}:balance")
        assert int(pipe.get("{w}:balance")) == 10
        other.set("{w}:balance", 99)  # someone else changes it
        pipe.multi()
        pipe.set("{w}:balance", 11)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert client.get("{w}:balance") == b"99"


def test_watch_lets_the_transaction_run_when_nothing_changed(proxy):
    client = proxy.client()
    client.set("{w2}:n", 1)
    with client.pipeline(transaction=True) as pipe:
        pipe.watch("{w2}:n")
        value = int(pipe.get("{w2}:n"))
        pipe.multi()
        pipe.set("{w2}:n", value + 1)
        assert pipe.execute() == [True]
    assert client.get("{w2}:n") == b"2"


def test_blpop_is_woken_by_a_push_from_another_client(proxy):
    waiter = proxy.client(socket_timeout=60)
    result = {}

    def wait() -> None:
        result["value"] = waiter.blpop(["queue:jobs"], timeout=10)

    thread = threading.Thread(target=wait)
    thread.start()
    pusher = proxy.client()
    # poll until the waiter is blocked on its node, then push
    from test_proxy_failures import eventually

    eventually(lambda: pusher.info("clients")["blocked_clients"] == 1, what="client blocked")
    pusher.rpush("queue:jobs", "job-1")
    thread.join(10)
    assert result["value"] == (b"queue:jobs", b"job-1")


def test_a_blocked_client_does_not_hold_up_anyone_else(proxy):
    from test_proxy_failures import eventually

    blocked = proxy.client(socket_timeout=30)
    thread = threading.Thread(target=lambda: blocked.blpop(["never:filled"], timeout=5))
    thread.start()
    other = proxy.client()
    eventually(lambda: other.info("clients")["blocked_clients"] == 1, what="client blocked")
    for i in range(200):  # all served while the other client waits on its node
        assert other.set(f"busy:{i}", i) is True
    assert other.info("clients")["blocked_clients"] == 1
    thread.join(10)


def test_blocking_pop_times_out_with_nil(proxy):
    assert proxy.client().blpop(["empty:list"], timeout=0.1) is None


def test_blocking_commands_with_keys_on_several_nodes_are_refused(proxy, nodes):
    a, b = keys_on(nodes, same=False, prefix="bl")
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        proxy.client().blpop([a, b], timeout=0.1)


def test_client_disconnect_releases_its_blocked_node_connection(proxy, nodes):
    from test_proxy_failures import eventually

    blocked = proxy.client(socket_timeout=1)
    with pytest.raises(redis.exceptions.TimeoutError):
        blocked.blpop(["gone:list"], timeout=0)  # blocks forever; the client gives up
    blocked.close()
    eventually(lambda: proxy.client().info("clients")["blocked_clients"] == 0,
               what="blocked connection released")
    total_blocked = sum(direct(n).info("clients")["blocked_clients"] for n in nodes)
    eventually(lambda: sum(direct(n).info("clients")["blocked_clients"] for n in nodes) == 0,
               what="node unblocked")
    assert total_blocked in (0, 1)


def test_xread_block_waits_for_an_entry(proxy, nodes):
    from test_proxy_failures import eventually

    reader = proxy.client(socket_timeout=60)
    writer = proxy.client()
    got = {}
    thread = threading.Thread(
        target=lambda: got.setdefault("r", reader.xread({"events": "$"}, block=30_000)))
    thread.start()
    # wait on the node itself: "$" means entries added after the node has the XREAD
    eventually(lambda: sum(direct(n).info("clients")["blocked_clients"] for n in nodes) == 1,
               what="xread blocked on its node")
    writer.xadd("events", {"kind": "login"})
    thread.join(30)
    entries = got["r"]
    assert entries  # [[b'events', [(id, {b'kind': b'login'})]]] in RESP2, a dict in RESP3
