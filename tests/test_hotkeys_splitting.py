"""Split counters without sockets: how each command on a split key is served, and how the
parts' replies become one answer."""

from __future__ import annotations

from hotkeys.splitting import SplitCounter, failed_amounts, taken_amounts
from router import resp

PARTS = [(0, b"pages"), (1, b"{rlsplit-1}pages"), (2, b"{rlsplit-7}pages")]


def bulk(value: bytes) -> bytes:
    return resp.bulk(value)


def flat(*items: bytes) -> bytes:
    return resp.array_of_raw([bulk(i) for i in items])


def test_hash_increments_go_to_one_part_each_and_reply_the_fields_total():
    counter = SplitCounter(b"pages", PARTS, "hash")
    counter.record(0, bulk(b"10"), b"home")
    sent = []
    for _ in range(3):
        calls, merge = counter.plan("hincrby", [b"HINCRBY", b"pages", b"home", b"1"], False)
        sent.append(calls)
        (node, args), = calls
        assert args[1] == PARTS[node][1] and args[2:] == [b"home", b"1"]
        reply = merge([b":%d\r\n" % (11 if node == 0 else 1)], 2)
    assert [calls[0][0] for calls in sent] == [1, 2, 0]  # each part in turn
    assert reply == b":13\r\n"  # 11 + 1 + 1, as last seen
    assert counter.outstanding == 0


def test_hget_sums_the_field_over_the_parts_and_is_nil_when_none_has_it():
    counter = SplitCounter(b"pages", PARTS, "hash")
    calls, merge = counter.plan("hget", [b"HGET", b"pages", b"home"], False)
    assert [args for _, args in calls] == [[b"HGET", name, b"home"] for _, name in PARTS]
    assert merge([bulk(b"5"), resp.NULL2, bulk(b"2.5")], 2) == bulk(b"7.5")
    assert merge([resp.NULL3, resp.NULL3, resp.NULL3], 3) == resp.NULL3
    assert merge([bulk(b"text"), resp.NULL2, resp.NULL2], 2) == bulk(b"text")  # alone: as is
    assert merge([bulk(b"5"), b"-ERR down\r\n", resp.NULL2], 2) == b"-ERR down\r\n"
    assert merge([bulk(b"text"), bulk(b"1"), resp.NULL2], 2).startswith(b"-ERR ringleader")


def test_hmget_sums_each_field_in_place():
    counter = SplitCounter(b"pages", PARTS, "hash")
    calls, merge = counter.plan("hmget", [b"HMGET", b"pages", b"a", b"b"], False)
    replies = [resp.array_of_raw([bulk(b"1"), resp.NULL2]),
               resp.array_of_raw([bulk(b"2"), resp.NULL2]),
               resp.array_of_raw([resp.NULL2, resp.NULL2])]
    assert merge(replies, 2) == resp.array_of_raw([bulk(b"3"), resp.NULL2])


def test_hgetall_and_friends_merge_every_parts_fields():
    counter = SplitCounter(b"pages", PARTS, "hash")
    replies2 = [flat(b"home", b"1", b"name", b"x"), flat(b"home", b"2", b"about", b"4"),
                flat()]
    replies3 = [b"%2\r\n" + bulk(b"home") + bulk(b"1") + bulk(b"name") + bulk(b"x"),
                b"%2\r\n" + bulk(b"home") + bulk(b"2") + bulk(b"about") + bulk(b"4"),
                b"%0\r\n"]
    calls, merge = counter.plan("hgetall", [b"HGETALL", b"pages"], False)
    assert [args for _, args in calls] == [[b"HGETALL", name] for _, name in PARTS]
    assert merge(replies2, 2) == flat(b"home", b"3", b"name", b"x", b"about", b"4")
    assert merge(replies3, 3) == (b"%3\r\n" + bulk(b"home") + bulk(b"3") + bulk(b"name")
                                  + bulk(b"x") + bulk(b"about") + bulk(b"4"))
    _, hkeys = counter.plan("hkeys", [b"HKEYS", b"pages"], False)
    assert hkeys(replies2, 2) == flat(b"home", b"name", b"about")
    _, hvals = counter.plan("hvals", [b"HVALS", b"pages"], False)
    assert hvals(replies2, 2) == flat(b"3", b"x", b"4")
    _, hlen = counter.plan("hlen", [b"HLEN", b"pages"], False)
    assert hlen(replies2, 2) == b":3\r\n"


def test_other_writes_are_refused_and_the_wrong_type_is_wrongtype():
    hashed = SplitCounter(b"pages", PARTS, "hash")
    refused = hashed.plan("hset", [b"HSET", b"pages", b"home", b"0"], False)
    assert refused.startswith(b"-ERR ringleader: 'HSET' is refused on 'pages'")
    assert hashed.plan("incr", [b"INCR", b"pages"], False).startswith(b"-WRONGTYPE")
    counted = SplitCounter(b"views", [(0, b"views"), (1, b"{rlsplit-1}views")], "string")
    assert counted.plan("hincrby", [b"HINCRBY", b"views", b"f", b"1"], False).startswith(
        b"-WRONGTYPE")
    calls, merge = hashed.plan("expire", [b"EXPIRE", b"pages", b"10"], False)
    assert len(calls) == 3 and merge([b":1\r\n", b":0\r\n", b":0\r\n"], 2) == b":1\r\n"


def test_while_folding_back_increments_go_to_the_key_itself():
    counter = SplitCounter(b"pages", PARTS, "hash")
    assert counter.plan("hincrby", [b"HINCRBY", b"pages", b"home", b"1"], True) is None
    assert counter.plan("hget", [b"HGET", b"pages", b"home"], True) is not None  # still summed


def test_fold_scripts_replies_become_the_amounts_to_add():
    assert taken_amounts([b"string", b"42"]) == ("string", [b"42"])
    assert taken_amounts([b"hash", [b"home", b"3", b"about", b"1.5"]]) == (
        "hash", [b"home", b"3", b"about", b"1.5"])
    assert taken_amounts([b"none"]) == ("none", [])
    assert failed_amounts("hash", []) == []
    assert failed_amounts("hash", [b"home", b"3"]) == [b"home", b"3"]
    assert failed_amounts("string", [b"", b"42"]) == [b"42"]


def test_fold_scripts_on_a_node_take_a_part_whole_and_never_drop_what_the_key_refuses(
        make_nodes):
    from helpers import direct

    from hotkeys.reserved import REGISTRY
    from hotkeys.splitting import ADD_SCRIPT, TAKE_SCRIPT

    node = direct(make_nodes(1)[0])
    node.hset(b"{rlsplit-1}pages", mapping={"home": 3, "about": "1.5", "views": 2})
    node.sadd(REGISTRY, b"{rlsplit-1}pages")
    node.hset(b"pages", mapping={"home": 10, "about": 1, "views": "not a number"})
    node.set(b"{rlsplit-1}views", 7)
    node.set(b"views", "2.5")

    kind, amounts = taken_amounts(node.eval(TAKE_SCRIPT, 2, b"{rlsplit-1}pages", REGISTRY))
    assert not node.exists(b"{rlsplit-1}pages") and not node.smembers(REGISTRY)
    left = failed_amounts(kind, node.eval(ADD_SCRIPT, 1, b"pages", kind, *amounts))
    assert left == [b"views", b"2"]  # the key's field is not a number: given back
    assert node.hgetall(b"pages") == {b"home": b"13", b"about": b"2.5",
                                      b"views": b"not a number"}

    kind, amounts = taken_amounts(node.eval(TAKE_SCRIPT, 2, b"{rlsplit-1}views", REGISTRY))
    assert failed_amounts(kind, node.eval(ADD_SCRIPT, 1, b"views", kind, *amounts)) == []
    assert node.get(b"views") == b"9.5"  # an integer part into a float counter
    assert taken_amounts(node.eval(TAKE_SCRIPT, 2, b"{rlsplit-1}views", REGISTRY)) == (
        "none", [])


def test_a_set_on_a_split_string_counter_is_refused_not_run_on_every_part():
    counter = SplitCounter(b"pages", PARTS, "string")
    refused = counter.plan("set", [b"SET", b"pages", b"5"], False)
    assert isinstance(refused, bytes) and refused.startswith(b"-ERR ringleader: 'SET' is refused")
    calls, _ = counter.plan("get", [b"GET", b"pages"], False)  # reads still sum every part
    assert len(calls) == len(PARTS)
    calls, _ = counter.plan("expire", [b"EXPIRE", b"pages", b"10"], False)
    assert [args[1] for _, args in calls] == [name for _, name in PARTS]
