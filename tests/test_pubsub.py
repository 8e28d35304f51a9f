"""Pub/sub through the proxy: channels live on their name's node, patterns on every node."""

from __future__ import annotations

import time

import pytest
import redis
from helpers import HOST, direct, raw_exchange

from router.config import from_node_list


def next_message(pubsub, timeout: float = 5.0):
    """The next message (not a confirmation), polling with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    raise AssertionError("no message arrived")


def channels_on_every_node(nodes, count: int = 3) -> list[str]:
    placement = from_node_list(",".join(n.address for n in nodes)).placement()
    chosen: dict[int, str] = {}
    for i in range(1000):
        chosen.setdefault(placement.node_index(f"news:{i}".encode()), f"news:{i}")
    return [chosen[i] for i in range(count)]


@pytest.mark.parametrize("protocol", [2, 3])
def test_publish_through_the_proxy_reaches_a_subscriber_through_the_proxy(proxy, protocol):
    subscriber = proxy.client(protocol=protocol).pubsub()
    subscriber.subscribe("alerts")
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"
    assert proxy.client().publish("alerts", "disk full") == 1
    message = next_message(subscriber)
    assert (message["channel"], message["data"]) == (b"alerts", b"disk full")
    subscriber.close()


def test_channels_on_different_nodes_all_deliver(proxy, nodes):
    channels = channels_on_every_node(nodes)
    subscriber = proxy.client(protocol=2).pubsub()
    subscriber.subscribe(*channels)
    publisher = proxy.client()
    for channel in channels:
        assert publisher.publish(channel, f"to {channel}") == 1
    got = {next_message(subscriber)["channel"] for _ in channels}
    assert got == {c.encode() for c in channels}
    subscriber.close()


def test_psubscribe_hears_channels_on_every_node(proxy, nodes):
    channels = channels_on_every_node(nodes)
    subscriber = proxy.client().pubsub()
    subscriber.psubscribe("news:*")
    assert subscriber.get_message(timeout=5)["type"] == "psubscribe"
    publisher = proxy.client()
    for channel in channels:
        publisher.publish(channel, "x")
    got = {next_message(subscriber)["channel"] for _ in channels}
    assert got == {c.encode() for c in channels}
    subscriber.close()


def test_subscription_counts_are_the_clients_totals(proxy, nodes):
    channels = channels_on_every_node(nodes)
    payload = b"SUBSCRIBE " + b" ".join(c.encode() for c in channels) + b"\r\nPSUBSCRIBE p*\r\n"
    reply = raw_exchange(proxy.port, payload, 4)
    counts = [int(line[1:]) for line in reply.split(b"\r\n") if line.startswith(b":")]
    assert counts == [1, 2, 3, 4]


def test_resp2_subscriber_may_only_ping_and_manage_subscriptions(proxy):
    reply = raw_exchange(proxy.port, b"SUBSCRIBE c1\r\nGET k\r\nPING\r\nUNSUBSCRIBE\r\nGET k\r\n", 5)
    lines = reply.split(b"\r\n")
    assert b"-ERR Can't execute 'get'" in reply
    assert b"pong" in lines
    assert reply.endswith(b"$-1\r\n")  # after unsubscribing, commands work again


def test_unsubscribe_stops_delivery(proxy):
    subscriber = proxy.client().pubsub()
    subscriber.subscribe("temp")
    subscriber.get_message(timeout=5)
    subscriber.unsubscribe("temp")
    assert subscriber.get_message(timeout=5)["type"] == "unsubscribe"
    assert proxy.client().publish("temp", "x") == 0
    subscriber.close()


def test_spublish_reaches_a_shard_subscriber(proxy):
    subscriber = proxy.client(protocol=2).pubsub()
    subscriber.ssubscribe("orders")
    assert subscriber.get_sharded_message(timeout=5)["type"] == "ssubscribe"
    assert proxy.client().spublish("orders", "#1") == 1
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = subscriber.get_sharded_message(ignore_subscribe_messages=True, timeout=0.1)
    assert message["data"] == b"#1"
    subscriber.close()


def test_pubsub_numsub_and_channels_see_every_node(proxy, nodes):
    channels = channels_on_every_node(nodes)
    subscriber = proxy.client().pubsub()
    subscriber.subscribe(*channels)
    for _ in channels:
        subscriber.get_message(timeout=5)
    client = proxy.client(protocol=2)
    assert set(client.pubsub_channels("news:*")) == {c.encode() for c in channels}
    assert dict(client.pubsub_numsub(*channels)) == {c.encode(): 1 for c in channels}
    subscriber.close()


def test_a_subscriber_does_not_slow_other_clients(proxy):
    subscriber = proxy.client().pubsub()
    subscriber.subscribe("busy")
    subscriber.get_message(timeout=5)
    client = proxy.client()
    for i in range(200):
        assert client.set(f"k{i}", i) is True
    subscriber.close()


def test_a_subscriber_that_disconnects_frees_its_node_subscriptions(proxy, nodes):
    subscriber = proxy.client().pubsub()
    subscriber.subscribe("leaving")
    subscriber.get_message(timeout=5)
    subscriber.close()
    publisher = proxy.client()
    deadline = time.monotonic() + 5
    while publisher.publish("leaving", "x") != 0:
        assert time.monotonic() < deadline, "node still has the subscription"
        time.sleep(0.02)
    assert sum(len(direct(n).pubsub_channels()) for n in nodes) == 0


def test_ping_with_a_message_in_subscribed_mode(proxy):
    reply = raw_exchange(proxy.port, b"SUBSCRIBE c\r\nPING hello\r\n", 2)
    assert reply.endswith(b"*2\r\n$4\r\npong\r\n$5\r\nhello\r\n")


def test_raw_subscriber_sees_messages_verbatim(proxy):
    import socket

    with socket.create_connection((HOST, proxy.port), timeout=5) as s:
        s.sendall(b"SUBSCRIBE verbatim\r\n")
        buf = b""
        while buf.count(b"\r\n") < 6:
            buf += s.recv(1024)
        proxy.client().publish("verbatim", "hi")
        data = b""
        while not data.endswith(b"hi\r\n"):
            data += s.recv(1024)
    assert data == b"*3\r\n$7\r\nmessage\r\n$8\r\nverbatim\r\n$2\r\nhi\r\n"


def test_publish_without_subscribers_returns_zero(proxy):
    assert proxy.client().publish("nobody", "x") == 0
    with pytest.raises(redis.ResponseError):
        proxy.client().execute_command("PUBLISH", "onlychannel")
