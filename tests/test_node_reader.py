"""A node connection's reply reader: every request's entry gets exactly its own reply, however
the replies are cut into reads. The reader frames a bulk reply with the same header as the
last one without parsing its length, so runs of like values, changes of length, lengths
whose digits are a prefix of another's (6 and 64), nulls and one-line replies between them
are what these tests feed it."""

from __future__ import annotations

import socket
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.node import UP, NodeConnection, NodeSettings
from backends.poller import Poller
from backends.slots import FanoutSlot, ItemsPart, Slot
from router import resp
from router.nodes import NodeSpec


class Client:
    """Stands in for a client session: the reader marks it dirty when a reply lands."""

    dirty = False
    proto = 2


def connected_reader(proto: int = 2) -> tuple[NodeConnection, socket.socket, Poller]:
    poller = Poller()
    poller._in_round = True  # dirty clients are collected, not flushed: the test reads them
    conn = NodeConnection(NodeSpec("127.0.0.1", 1), proto, NodeSettings(), poller)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn.sock = ours
    conn.state = UP
    return conn, theirs, poller


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points) if b > a]


like_values = st.sampled_from([None, b"", b"x" * 6, b"y" * 6, b"z" * 64, b"w" * 640, b"\r\n$6\r\n"])
any_reply = st.one_of(like_values, st.integers(min_value=-5, max_value=10**6),
                      st.lists(like_values, max_size=5)).map(resp.encode)
#: status and error lines between the bulk replies
lines = st.sampled_from([b"+OK\r\n", b"+OKAY\r\n", b"+O\r\n", b"+QUEUED\r\n", b"-ERR x\r\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(any_reply, lines), min_size=1, max_size=40),
       st.lists(st.integers(min_value=0, max_value=100_000), max_size=12))
def test_every_entry_gets_its_own_reply_however_the_replies_are_cut(replies, cuts):
    conn, node_side, _ = connected_reader()
    client = Client()
    slots = [Slot(client) for _ in replies]
    conn.fifo.extend(slots)
    try:
        for piece in cut(b"".join(replies), cuts):
            node_side.sendall(piece)
            conn.on_readable()
        assert [s.data for s in slots] == replies
        assert not conn.fifo
    finally:
        node_side.close()
        conn.sock.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(like_values, max_size=6), min_size=1, max_size=8),
       st.lists(st.integers(min_value=0, max_value=20_000), max_size=8))
def test_split_mget_replies_arrive_cut_into_their_values(arrays, cuts):
    conn, node_side, _ = connected_reader()
    client = Client()
    got = []
    for _ in arrays:
        parent = FanoutSlot(client, 1, lambda parts, proto: got.append(parts[0]) or b"")
        conn.fifo.append(ItemsPart(parent, 0))
    replies = [resp.encode(a, 2) for a in arrays]
    try:
        for piece in cut(b"".join(replies), cuts):
            node_side.sendall(piece)
            conn.on_readable()
        assert got == [resp.split_reply_array(r) for r in replies]
    finally:
        node_side.close()
        conn.sock.close()


def test_a_bulk_after_a_like_header_of_another_length_is_framed_by_its_own_length():
    conn, node_side, _ = connected_reader()
    client = Client()
    replies = [b"$6\r\nabcdef\r\n", b"$64\r\n" + b"v" * 64 + b"\r\n", b"$6\r\nghijkl\r\n"]
    slots = [Slot(client) for _ in replies]
    conn.fifo.extend(slots)
    try:
        node_side.sendall(b"".join(replies))
        conn.on_readable()
        assert [s.data for s in slots] == replies
    finally:
        node_side.close()
        conn.sock.close()
