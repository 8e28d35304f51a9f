"""RESP framing without sockets: requests from clients, reply boundaries from nodes."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import resp
from router.resp import ProtocolError, RequestLimits, RequestReader

args_strategy = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=6)
pipelines = st.lists(args_strategy, min_size=1, max_size=30)


def encode_request(args: list[bytes]) -> bytes:
    return hiredis.pack_command(tuple(args))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in points:
        pieces.append(data[prev:p])
        prev = p
    pieces.append(data[prev:])
    return [p for p in pieces if p]


@settings(max_examples=200, deadline=None)
@given(pipelines, st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_fragmentation_of_a_pipeline_gives_the_same_requests(requests, cuts):
    stream = b"".join(encode_request(r) for r in requests)
    reader = RequestReader()
    parsed = []
    for piece in split_at(stream, cuts):
        parsed.extend(reader.feed(piece))
    assert parsed == requests


reply_values = st.recursive(
    st.one_of(st.binary(max_size=20), st.integers(min_value=-(2**63), max_value=2**63 - 1),
              st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.binary(max_size=5), children, max_size=3)),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(reply_values, min_size=1, max_size=10), st.sampled_from([2, 3]),
       st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
def test_reply_boundaries_are_found_in_any_stream(values, proto, cuts):
    encoded = [resp.encode(v, proto) for v in values]
    stream = b"".join(encoded)
    # the boundaries found match the encoder's, and an incomplete tail is reported as such
    pos, found = 0, []
    while pos < len(stream):
        end = resp.reply_end(stream, pos, len(stream))
        assert end > pos
        found.append(stream[pos:end])
        pos = end
    assert found == encoded
    for cut in cuts:
        cut %= len(stream)
        if cut == 0:
            continue
        end = resp.reply_end(stream, 0, cut)
        assert end == -1 or end <= cut


@settings(max_examples=200, deadline=None)
@given(st.lists(reply_values, min_size=1, max_size=10), st.sampled_from([2, 3]),
       st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
def test_array_elements_frame_like_reply_end_and_cut_arrays_apart(values, proto, cuts):
    stream = b"".join(resp.encode(v, proto) for v in values)
    pos = 0
    while pos < len(stream):
        end, items = resp.array_elements(stream, pos, len(stream))
        assert end == resp.reply_end(stream, pos, len(stream))
        expected = resp.split_reply_array(stream[pos:end]) if stream[pos] == 42 else None
        assert items == expected
        pos = end
    for cut in cuts:
        cut %= len(stream)
        if cut:
            assert resp.array_elements(stream, 0, cut)[0] in (-1, resp.reply_end(stream, 0, cut))


def test_reply_end_handles_every_resp3_type():
    samples = [b"+OK\r\n", b"-ERR x\r\n", b":5\r\n", b"$3\r\nabc\r\n", b"$-1\r\n", b"*-1\r\n",
               b"_\r\n", b",3.14\r\n", b"#t\r\n", b"(123\r\n", b"=8\r\ntxt:abcd\r\n",
               b"!3\r\nerr\r\n", b"%1\r\n+a\r\n:1\r\n", b"~2\r\n:1\r\n:2\r\n",
               b">2\r\n+message\r\n+x\r\n", b"|1\r\n+ttl\r\n:3\r\n+value\r\n"]
    for sample in samples:
        assert resp.reply_end(sample, 0, len(sample)) == len(sample), sample


def test_inline_commands_are_split_on_spaces():
    assert RequestReader().feed(b"SET a  b\r\nPING\n") == [[b"SET", b"a", b"b"], [b"PING"]]


def test_an_inline_line_split_over_reads_is_joined():
    reader = RequestReader()
    assert reader.feed(b"GE") == []
    assert reader.feed(b"T key\r\n") == [[b"GET", b"key"]]


def test_a_multibulk_connection_never_parses_inline():
    reader = RequestReader()
    reader.feed(b"*1\r\n$4\r\nPING\r\n")
    with pytest.raises(ProtocolError):
        reader.feed(b"PING\r\n")


def test_declared_oversized_bulk_is_refused_from_its_header():
    reader = RequestReader(RequestLimits(max_bulk=100))
    with pytest.raises(ProtocolError, match="bulk length 5000"):
        reader.feed(b"*2\r\n$3\r\nGET\r\n$5000\r\n")


def test_declared_argument_count_over_the_limit_is_refused():
    reader = RequestReader(RequestLimits(max_args=10))
    with pytest.raises(ProtocolError, match="11 arguments"):
        reader.feed(b"*11\r\n")


def test_a_request_growing_past_the_limit_is_refused_without_its_header():
    reader = RequestReader(RequestLimits(max_bulk=1000))
    # the oversized header shares a read with a complete request, so it is not inspected
    assert reader.feed(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1000000\r\n") == [[b"PING"]]
    with pytest.raises(ProtocolError, match="request larger than"):
        for _ in range(2000):
            reader.feed(b"x" * 100)


def test_a_bad_length_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        RequestReader().feed(b"*1\r\n$abc\r\n")


def test_merged_array_elements_are_split_back():
    assert resp.split_reply_array(b"*3\r\n$1\r\na\r\n$-1\r\n:4\r\n") == [b"$1\r\na\r\n", b"$-1\r\n",
                                                                     b":4\r\n"]
    assert resp.split_reply_array(b"-ERR no\r\n") is None


@pytest.mark.parametrize("proto,expected", [(2, b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$-1\r\n"),
                                            (3, b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n_\r\n")])
def test_maps_are_flat_arrays_in_resp2_and_maps_in_resp3(proto, expected):
    assert resp.encode({"a": 1, "b": None}, proto) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=2, max_size=3))
def test_the_joined_request_encodings_match_pack_command_for_any_name(args):
    name, *rest = args
    kept = dict(resp.HEADS[len(args)])  # arbitrary names must not fill the table for others
    try:
        encoded = resp.request_head(len(args), name) + b"".join(
            resp.BULK_HEADS[len(arg)] + arg + resp.CRLF for arg in rest)
    finally:
        resp.HEADS[len(args)].clear()
        resp.HEADS[len(args)].update(kept)
    assert encoded == resp.pack_command(tuple(args))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"GET", b"get", b"SET", b"x" * 40]),
       st.lists(st.binary(max_size=1023), min_size=1, max_size=2))
def test_requests_joined_from_ready_heads_match_pack_command(name, rest):
    count = 1 + len(rest)
    head = resp.HEADS[count].get(name) or resp.request_head(count, name)
    encoded = head + b"".join(resp.BULK_HEADS[len(arg)] + arg + resp.CRLF for arg in rest)
    assert encoded == resp.pack_command((name, *rest))
    assert resp.HEADS[count][name] == head


def test_a_command_name_that_is_not_bytes_gets_no_ready_head():
    with pytest.raises(TypeError):
        resp.request_head(2, "get")
