"""The command table: key positions, arity and error texts, checked against a real server.

The rule for arguments where the server's ``COMMAND GETKEYS`` finds no keys (it errors, or
answers ``[]``): ``key_positions`` either returns ``[]`` or raises ``CommandError``, and it
raises only with the exact error the command itself replies (wrong arity, malformed numkeys,
MIGRATE KEYS with a key). Whenever GETKEYS finds keys, ``key_positions`` finds the same ones,
except where GETKEYS itself is wrong about the command (the deviation tests at the end):
it reads numkeys with atoi() and truncates it to 32 bits, so it lists keys for arguments the
command rejects, and it finds no key in ``PFMERGE dest`` although the command writes dest.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence

import hiredis
import pytest
from helpers import NodeFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.local_nodes import HOST, RedisProcess
from router.commands import (
    CASE_CACHE_LIMIT,
    DEFAULT_JSON,
    CommandError,
    CommandSpec,
    CommandTable,
    fetch_command_reply,
    main,
    render_json,
)

FUNCTION_LIBRARY = (
    "#!lua name=ringleader_test\n"
    "redis.register_function('f', function(keys, args) return 1 end)\n"
    "redis.register_function{function_name='g', callback=function(keys, args) return 1 end,"
    " flags={'no-writes'}}"
)
UNKNOWN_SHA = "0" * 40  # a well-formed sha: EVALSHA checks numkeys before the script exists


class RawConnection:
    """A plain RESP2 connection: pipelined requests, replies as hiredis gives them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.reader = hiredis.Reader()

    @staticmethod
    def encode(args: Sequence[bytes | str]) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(parts)

    def pipeline(self, requests: Sequence[Sequence[bytes | str]]) -> list[object]:
        self.sock.sendall(b"".join(self.encode(args) for args in requests))
        replies: list[object] = []
        while len(replies) < len(requests):
            reply = self.reader.gets()
            if reply is False:
                self.reader.feed(self.sock.recv(1 << 16))
            else:
                replies.append(reply)
        return replies

    def call(self, *args: bytes | str) -> object:
        return self.pipeline([args])[0]

    def error_bytes(self, args: Sequence[bytes]) -> bytes:
        """An error reply's exact bytes (hiredis would decode them, losing invalid UTF-8)."""
        self.sock.sendall(self.encode(args))
        line = b""
        while not line.endswith(b"\r\n"):
            line += self.sock.recv(1 << 16)
        assert line.startswith(b"-"), line
        return line[1:-2]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(redis_server_binary: str) -> Iterator[RedisProcess]:
    factory = NodeFactory(redis_server_binary)
    try:
        yield factory(1)[0]
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def conn(server: RedisProcess) -> Iterator[RawConnection]:
    connection = RawConnection(server.port)
    connection.call("FUNCTION", "LOAD", "REPLACE", FUNCTION_LIBRARY)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def table() -> CommandTable:
    return CommandTable.default()


def b(*words: str) -> list[bytes]:
    return [w.encode() for w in words]


def positions(table: CommandTable, args: Sequence[bytes]) -> list[int]:
    spec = table.lookup(args)
    assert spec is not None, args
    return spec.key_positions(args)


def outcome(table: CommandTable, args: Sequence[bytes]) -> list[bytes] | CommandError:
    """Our answer as the key names GETKEYS would list, or the error we raise."""
    try:
        return [args[i] for i in positions(table, args)]
    except CommandError as exc:
        return exc


def agrees_with_getkeys(ours: list[bytes] | CommandError, reply: object) -> bool:
    if isinstance(reply, list) and reply:
        return ours == reply
    return isinstance(ours, CommandError) or ours == []


def disagreements(table: CommandTable, conn: RawConnection,
                  cases: Sequence[Sequence[bytes]]) -> list[str]:
    replies = conn.pipeline([[b"COMMAND", b"GETKEYS", *args] for args in cases])
    found = []
    for args, reply in zip(cases, replies, strict=True):
        ours = outcome(table, args)
        if not agrees_with_getkeys(ours, reply):
            found.append(f"{[a.decode(errors='replace') for a in args]}: "
                         f"GETKEYS {reply!r}, ours {ours!r}")
    return found


# --------------------------------------------------------------------------- the table itself


def test_shipped_table_is_what_the_server_reports(table: CommandTable, server: RedisProcess):
    reply, version = fetch_command_reply(HOST, server.port)
    shipped = json.loads(DEFAULT_JSON.read_text())
    if version != shipped["server"]:
        pytest.skip(f"table recorded from {shipped['server']}, test server is {version}")
    assert render_json(reply, version) == DEFAULT_JSON.read_text()
    assert sorted(CommandTable.from_command_reply(reply), key=lambda s: s.name) == sorted(
        table, key=lambda s: s.name)


def test_dump_entry_point_writes_a_table_that_loads_back(server: RedisProcess, tmp_path):
    out = tmp_path / "commands.json"
    assert main(["--dump", f"{HOST}:{server.port}", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    dumped = CommandTable.from_command_reply(data["commands"])
    assert dumped.get("get") == CommandTable.default().get("get")
    assert len(dumped) == len(CommandTable.default())


def test_default_table_is_parsed_once():
    assert CommandTable.default() is CommandTable.default()


def test_spec_fields_follow_the_server(table: CommandTable):
    get = table.get("get")
    assert (get.name, get.arity, get.is_readonly, get.is_write) == ("get", 2, True, False)
    assert "@read" in get.acl_categories and "fast" in get.flags
    assert table.get("set").is_write
    assert table.get("blpop").is_blocking
    assert table.get("xread").movable_keys and not table.get("get").movable_keys
    assert "pubsub" in table.get("subscribe").flags
    assert "admin" in table.get("config|set").flags
    assert "noscript" in table.get("eval").flags


def test_has_keys_is_false_for_keyless_commands_and_shard_channels(table: CommandTable):
    assert table.get("get").has_keys and table.get("object|encoding").has_keys
    for name in ("ping", "object", "client|setname", "spublish", "ssubscribe"):
        assert not table.get(name).has_keys, name


def test_subcommands_are_keyed_by_short_name_and_named_in_full(table: CommandTable):
    client = table.get("client")
    assert client.is_container and "setname" in client.subcommands
    assert client.subcommands["setname"].name == "client|setname"
    assert table.get("CLIENT|SETNAME") is client.subcommands["setname"]


# --------------------------------------------------------------------------- known key positions

KNOWN = [
    (b("GET", "k"), [1]),
    (b("SET", "k", "v", "EX", "10"), [1]),
    (b("MSET", "a", "1", "b", "2", "c", "3"), [1, 3, 5]),
    (b("MGET", "a", "b", "a"), [1, 2, 3]),
    (b("DEL", "a"), [1]),
    (b("BLPOP", "a", "b", "0"), [1, 2]),
    (b("LMOVE", "src", "dst", "LEFT", "RIGHT"), [1, 2]),
    (b("EVAL", "return 1", "2", "a", "b", "arg"), [3, 4]),
    (b("EVAL", "return 1", "0", "arg"), []),
    (b("EVALSHA", UNKNOWN_SHA, "1", "a"), [3]),
    (b("FCALL", "f", "1", "a", "arg"), [3]),
    (b("ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"), [1, 3, 4]),
    (b("ZINTER", "2", "a", "b", "WITHSCORES"), [2, 3]),
    (b("ZDIFFSTORE", "dst", "1", "a"), [1, 3]),
    (b("XREAD", "COUNT", "2", "STREAMS", "a", "b", "0", "0"), [4, 5]),
    (b("XREAD", "BLOCK", "0", "streams", "s", "$"), [4]),
    (b("XREADGROUP", "GROUP", "g", "c", "STREAMS", "a", ">"), [5]),
    (b("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "NOACK", "STREAMS", "a", "b", ">", ">"),
     [8, 9]),
    (b("XREADGROUP", "STREAMS", "a", "b", "c", "d", "STREAMS", "0"), [2, 3, 4]),
    (b("GEORADIUS", "k", "0", "0", "1", "km", "STORE", "dst"), [1, 7]),
    (b("GEORADIUS", "k", "0", "0", "1", "km", "STOREDIST", "dst"), [1, 7]),
    (b("GEORADIUSBYMEMBER", "k", "m", "1", "km", "WITHDIST", "store", "dst"), [1, 7]),
    (b("GEORADIUS", "k", "0", "0", "1", "km"), [1]),
    (b("SORT", "k", "BY", "w_*", "GET", "o_*", "STORE", "dst"), [1, 7]),
    (b("SORT", "k", "LIMIT", "0", "10", "ALPHA"), [1]),
    (b("SORT", "k", "BY", "store", "STORE", "a", "STORE", "b"), [1, 7]),
    (b("SORT_RO", "k", "STORE", "dst"), [1]),
    (b("LMPOP", "2", "a", "b", "LEFT", "COUNT", "3"), [2, 3]),
    (b("ZMPOP", "1", "z", "MIN"), [2]),
    (b("BLMPOP", "0.5", "2", "a", "b", "RIGHT"), [3, 4]),
    (b("BZMPOP", "0", "1", "z", "MAX"), [3]),
    (b("SINTERCARD", "2", "a", "b", "LIMIT", "5"), [2, 3]),
    (b("ZINTERCARD", "1", "a"), [2]),
    (b("MIGRATE", "h", "6379", "k", "0", "1000"), [3]),
    (b("MIGRATE", "h", "6379", "", "0", "1000", "COPY", "REPLACE", "KEYS", "a", "b"), [9, 10]),
    (b("MIGRATE", "h", "6379", "", "0", "1000", "AUTH2", "u", "KEYS", "KEYS", "a"), [10]),
    (b("OBJECT", "ENCODING", "k"), [2]),
    (b("object", "freq", "k"), [2]),
    (b("MEMORY", "USAGE", "k", "SAMPLES", "5"), [2]),
    (b("XINFO", "STREAM", "s", "FULL"), [2]),
    (b("XINFO", "GROUPS", "s"), [2]),
    (b("XGROUP", "CREATE", "s", "g", "$"), [2]),
    (b("BITFIELD_RO", "k", "GET", "u8", "0"), [1]),
    (b("BITFIELD", "k", "INCRBY", "u8", "0", "1"), [1]),
    (b("LCS", "a", "b"), [1, 2]),
    (b("PING",), []),
    (b("ECHO", "x"), []),
    (b("CLIENT", "SETNAME", "x"), []),
    (b("CONFIG", "GET", "maxmemory"), []),
    (b("SPUBLISH", "chan", "msg"), []),
    (b("PUBLISH", "chan", "msg"), []),
]


@pytest.mark.parametrize(("args", "expected"), KNOWN,
                         ids=[" ".join(a.decode() for a in args[:3]) for args, _ in KNOWN])
def test_known_key_positions(table: CommandTable, args: list[bytes], expected: list[int]):
    assert positions(table, args) == expected


def test_known_key_positions_are_what_the_server_reports(table: CommandTable,
                                                         conn: RawConnection):
    keyed = [args for args, expected in KNOWN if expected]
    replies = conn.pipeline([[b"COMMAND", b"GETKEYS", *args] for args in keyed])
    for args, reply in zip(keyed, replies, strict=True):
        assert [args[i] for i in positions(table, args)] == reply, args


def test_shard_channels_are_channel_positions_not_keys(table: CommandTable):
    assert table.get("spublish").channel_positions(b("SPUBLISH", "c", "m")) == [1]
    assert table.get("ssubscribe").channel_positions(b("SSUBSCRIBE", "a", "b")) == [1, 2]
    assert table.get("get").channel_positions(b("GET", "k")) == []


def test_key_positions_returns_a_fresh_list(table: CommandTable):
    args = b("GET", "k")
    first = positions(table, args)
    first.append(99)
    assert positions(table, args) == [1]


def test_key_positions_raises_the_arity_error_for_a_wrong_argument_count(table: CommandTable):
    with pytest.raises(CommandError, match=r"^ERR wrong number of arguments for 'get' command$"):
        positions(table, b("GET", "a", "b"))
    with pytest.raises(CommandError, match=r"'object\|encoding'"):
        positions(table, b("OBJECT", "ENCODING"))


# --------------------------------------------------------------------------- against GETKEYS

#: Options the servers' own key finders skip or look for, beyond the keywords in key specs.
FINDER_KEYWORDS = {
    "sort": ["STORE", "LIMIT", "GET", "BY", "store"],
    "sort_ro": ["STORE", "LIMIT", "GET", "BY"],
    "migrate": ["KEYS", "COPY", "REPLACE", "AUTH", "AUTH2", "keys"],
    "xread": ["COUNT", "BLOCK", "streams"],
    "xreadgroup": ["GROUP", "COUNT", "NOACK", "streams"],
}


def probe_keywords(spec: CommandSpec) -> list[str]:
    words = {ks.keyword for ks in spec.key_specs if ks.keyword}
    return sorted(words) + FINDER_KEYWORDS.get(spec.name, [])


def command_prefix(spec: CommandSpec) -> list[bytes]:
    return [part.upper().encode() for part in spec.name.split("|")]


def systematic_cases(spec: CommandSpec) -> Iterator[list[bytes]]:
    """Argument lists of every allowed length (up to 6 beyond a minimum), unique filler tokens,
    each probe keyword at each position, and every numkeys from -1 to past the end."""
    prefix = command_prefix(spec)
    lo = abs(spec.arity)
    hi = spec.arity if spec.arity > 0 else lo + 6
    keywords = probe_keywords(spec) if spec.has_keys else []
    numkeys_at = sorted({ks.index + ks.keynumidx for ks in spec.key_specs
                         if ks.find_keys == "keynum" and ks.begin_search == "index"})
    for n in range(max(lo, len(prefix), 2), hi + 1):
        base = prefix + [f"a{i}".encode() for i in range(len(prefix), n)]
        bases = [base]
        if spec.name == "migrate":
            bases.append([*base[:3], b"", *base[4:]])
        for args in bases:
            yield args
            for word in keywords:
                for p in range(len(prefix), n):
                    yield [*args[:p], word.encode(), *args[p + 1:]]
            for p in numkeys_at:
                if p < n:
                    for value in [*range(-1, n - p + 1), "x"]:
                        yield [*args[:p], str(value).encode(), *args[p + 1:]]


def getkeys_misses_the_keys(args: Sequence[bytes]) -> bool:
    """PFMERGE with no source: GETKEYS fails on the empty source range, though the command runs
    and writes its destination (see the deviation tests)."""
    return args[0] == b"PFMERGE" and len(args) == 2


def test_key_positions_agree_with_getkeys_for_every_command(table: CommandTable,
                                                             conn: RawConnection):
    cases = [args for spec in table.all_specs() if not spec.is_container
             for args in systematic_cases(spec) if not getkeys_misses_the_keys(args)]
    assert len(cases) > 2000
    found = disagreements(table, conn, cases)
    assert not found, "\n".join(found[:30])


IRREGULAR = [
    "sort", "sort_ro", "migrate", "xread", "xreadgroup", "georadius", "georadiusbymember",
    "georadius_ro", "eval", "eval_ro", "fcall", "zunionstore", "zinterstore", "zinter",
    "zintercard", "lmpop", "blmpop", "zmpop", "bzmpop", "sintercard", "mset", "blpop",
    "object|encoding", "memory|usage", "xinfo|stream", "bitfield_ro",
]
VOCABULARY = ["STORE", "store", "StoreDist", "STOREDIST", "LIMIT", "GET", "BY", "KEYS", "keys",
              "COPY", "REPLACE", "AUTH", "AUTH2", "STREAMS", "streams", "COUNT", "BLOCK", "GROUP",
              "NOACK", "LEFT", "WEIGHTS", "", "-1", "0", "1", "2", "3", "4"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_key_positions_agree_with_getkeys_on_random_arguments(table: CommandTable,
                                                              conn: RawConnection, data):
    spec = table.get(data.draw(st.sampled_from(IRREGULAR), label="command"))
    prefix = command_prefix(spec)
    lo = abs(spec.arity) - len(prefix)
    words = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(VOCABULARY)),
                               min_size=max(lo - 1, 0), max_size=lo + 8), label="args")
    args = prefix + [w.encode() if w is not None else f"u{i}".encode()
                     for i, w in enumerate(words)]
    if len(args) < 2:
        return
    assert not disagreements(table, conn, [args])


def test_keyword_matching_stops_at_a_nul_byte_as_the_server_does(table: CommandTable,
                                                                conn: RawConnection):
    cases = [[b"XREAD", b"STREAMS\0junk", b"a", b"0"],
             [b"SORT", b"k", b"store\0x", b"dst"],
             [b"MIGRATE", b"h", b"1", b"", b"0", b"5", b"keys\0", b"a"]]
    assert not disagreements(table, conn, cases)
    assert positions(table, cases[0]) == [2]


# --------------------------------------------------------------------------- numkeys errors

NUMKEYS_ERRORS = [
    b("EVAL", "return 1", "x"),
    b("EVAL", "return 1", "-1"),
    b("EVAL", "return 1", "2", "a"),
    b("EVAL", "return 1", "99999999999999999999"),
    b("EVAL_RO", "return 1", "+1", "a"),
    b("EVALSHA", UNKNOWN_SHA, "x"),
    b("EVALSHA", UNKNOWN_SHA, "-1"),
    b("EVALSHA_RO", UNKNOWN_SHA, "3", "a", "b"),
    b("FCALL", "f", "x"),
    b("FCALL", "f", "-1"),
    b("FCALL", "f", "2", "a"),
    b("FCALL_RO", "g", "99999999999999999999"),
    b("FCALL_RO", "g", "2", "a"),
    b("ZUNIONSTORE", "d", "x", "a"),
    b("ZUNIONSTORE", "d", "0", "a"),
    b("ZUNIONSTORE", "d", "-1", "a"),
    b("ZUNIONSTORE", "d", "2", "a"),
    b("ZINTERSTORE", "d", "0", "a"),
    b("ZDIFFSTORE", "d", "5", "a"),
    b("ZUNION", "x", "a"),
    b("ZINTER", "0", "a"),
    b("ZDIFF", "3", "a"),
    b("ZINTERCARD", "-1", "a"),
    b("ZINTERCARD", "2", "a"),
    b("ZINTERCARD", " 1", "a"),
    b("SINTERCARD", "x", "a"),
    b("SINTERCARD", "0", "a"),
    b("SINTERCARD", "2", "a"),
    b("SINTERCARD", "99999999999999999999", "a"),
    b("LMPOP", "x", "a", "LEFT"),
    b("LMPOP", "0", "a", "LEFT"),
    b("LMPOP", "3", "a", "LEFT"),
    b("ZMPOP", "-1", "a", "MIN"),
    b("ZMPOP", "3", "a", "MIN"),
    b("BLMPOP", "0", "x", "a", "LEFT"),
    b("BLMPOP", "0", "3", "a", "LEFT"),
    b("BZMPOP", "0", "0", "a", "MIN"),
    b("BZMPOP", "0", "3", "a", "MAX"),
]


@pytest.mark.parametrize("args", NUMKEYS_ERRORS,
                         ids=[" ".join(a.decode()[:12] for a in args) for args in NUMKEYS_ERRORS])
def test_malformed_numkeys_raises_the_commands_own_error(table: CommandTable,
                                                         conn: RawConnection, args):
    with pytest.raises(CommandError) as raised:
        positions(table, args)
    assert raised.value.message == str(conn.call(*args))


MIGRATE_KEYS_WITH_A_KEY = [
    b("MIGRATE", "h", "1", "k", "0", "5", "KEYS", "a"),
    b("MIGRATE", "h", "1", "k", "0", "5", "COPY", "AUTH", "pw", "KEYS", "a", "b"),
    b("MIGRATE", "h", "1", "k", "0", "5", "bogus", "KEYS", "a"),
    b("MIGRATE", "h", "1", "k", "0", "5", "AUTH2", "u", "KEYS", "KEYS", "a"),
]


@pytest.mark.parametrize("args", MIGRATE_KEYS_WITH_A_KEY)
def test_migrate_keys_form_with_a_key_raises_the_commands_own_error(table: CommandTable,
                                                                    conn: RawConnection, args):
    with pytest.raises(CommandError) as raised:
        positions(table, args)
    assert raised.value.message == str(conn.call(*args))


# --------------------------------------------------------------------------- error texts

UNKNOWN_REQUESTS = [
    b("foo"),
    b("foo", "a", "b"),
    [b"foo", *(b"arg%d" % i for i in range(40))],
    [b"foo", b"x" * 200],
    [b"f" * 200, b"a"],
    [b"foo", b"x" * 120, b"y" * 12, b"z"],
    [b"foo", b"x" * 125, b"yy", b"z"],
    [b"foo", b"x" * 126, b"y"],
    [b"foo", b"a\r\nb", b"c\x00d", b"e"],
    [b"fo\no"],
    [b"get\x00x", b"a"],
    [b"\xff\xfe", "é".encode() * 70],
    b("OBJECT", "nope"),
    b("object", "nope", "k"),
    [b"oBjEct", b"x" * 200],
    [b"client", b"a\nb"],
    [b"xinfo", b"\xc3"],
]


@pytest.mark.parametrize("args", UNKNOWN_REQUESTS, ids=[repr(a)[:40] for a in UNKNOWN_REQUESTS])
def test_unknown_command_and_subcommand_errors_match_the_server(table: CommandTable,
                                                                conn: RawConnection, args):
    assert table.lookup(args) is None
    with pytest.raises(CommandError) as raised:
        table.resolve(args)
    expected = conn.error_bytes(args)
    assert raised.value.message.encode("utf-8", "surrogateescape") == expected
    helper = (table.unknown_subcommand_error if table.is_container_name(args[0])
              else table.unknown_command_error)
    assert helper(args) == raised.value.message


def test_error_helpers_use_the_documented_shapes(table: CommandTable):
    assert table.unknown_command_error(b("foo", "a", "b")) == (
        "ERR unknown command 'foo', with args beginning with: 'a' 'b' ")
    assert table.unknown_subcommand_error(b("client", "x")) == (
        "ERR unknown subcommand 'x'. Try CLIENT HELP.")
    assert table.arity_error(table.get("client|setname")) == (
        "ERR wrong number of arguments for 'client|setname' command")


def wrong_argument_counts(spec: CommandSpec) -> Iterator[int]:
    depth = spec.name.count("|") + 1
    lo = abs(spec.arity)
    if lo - 1 > depth:
        yield lo - 1
    if spec.arity > 0:
        yield spec.arity + 1


def test_arity_errors_match_the_server_for_every_command(table: CommandTable,
                                                         conn: RawConnection):
    """Every request sent here has a wrong count, so the server rejects it before running it."""
    cases: list[tuple[CommandSpec, list[bytes]]] = []
    for spec in table.all_specs():
        for argc in wrong_argument_counts(spec):
            assert not spec.check_arity(argc), (spec.name, argc)
            prefix = command_prefix(spec)
            args = prefix + [b"x"] * (argc - len(prefix))
            assert table.lookup(args) is spec
            cases.append((spec, args))
    assert len(cases) > 300
    replies = conn.pipeline([args for _, args in cases])
    for (spec, args), reply in zip(cases, replies, strict=True):
        assert str(reply) == table.arity_error(spec), args
        with pytest.raises(CommandError) as raised:
            table.resolve(args)
        assert raised.value.message == str(reply)


ACCEPTED = [b("GET", "k"), b("MSET", "a", "1"), b("MSET", "a", "1", "b", "2"), b("PING"),
            b("ECHO", "x"), b("OBJECT", "ENCODING", "nokey"), b("CLIENT", "GETNAME"),
            b("CONFIG", "GET", "maxmemory", "port"), b("EXISTS", "a", "b", "c")]


def test_accepted_argument_counts_are_accepted_by_the_server(table: CommandTable,
                                                             conn: RawConnection):
    for args, reply in zip(ACCEPTED, conn.pipeline(ACCEPTED), strict=True):
        assert table.resolve(args).check_arity(len(args))
        assert "wrong number of arguments" not in str(reply), args


def test_container_without_subcommand_fails_arity_under_its_own_name(table: CommandTable,
                                                                     conn: RawConnection):
    spec = table.lookup(b("CONFIG"))
    assert spec is table.get("config") and not spec.check_arity(1)
    assert table.arity_error(spec) == str(conn.call("CONFIG"))


# --------------------------------------------------------------------------- lookup


@pytest.mark.parametrize("name", [b"get", b"GET", b"Get", b"gEt"])
def test_lookup_ignores_the_case_of_the_command_name(table: CommandTable, name: bytes):
    assert table.lookup([name, b"k"]) is table.get("get")


@pytest.mark.parametrize("sub", [b"setname", b"SETNAME", b"SetName"])
def test_lookup_resolves_subcommands_case_insensitively(table: CommandTable, sub: bytes):
    assert table.lookup([b"Client", sub, b"x"]) is table.get("client|setname")


def test_lookup_returns_none_for_unknown_commands_and_subcommands(table: CommandTable):
    assert table.lookup(b("nosuchcommand")) is None
    assert table.lookup(b("CLIENT", "nosuchsub")) is None


def test_lookup_of_random_names_stays_within_the_case_cache_bound():
    table = CommandTable.from_command_reply(
        json.loads(DEFAULT_JSON.read_text())["commands"])
    before = len(table._names)  # noqa: SLF001 - the cache is the behaviour under test
    name = b"georadiusbymember_ro"
    for i in range(CASE_CACHE_LIMIT + 500):
        variant = bytes(c ^ 0x20 if (i >> (j % 20)) & 1 and c != ord("_") else c
                        for j, c in enumerate(name))
        assert table.lookup([variant, b"k"]) is table.get("georadiusbymember_ro")
        assert table.lookup([b"unknown%d" % i]) is None
    assert len(table._names) <= before + CASE_CACHE_LIMIT  # noqa: SLF001


# --------------------------------------------------------------------------- building tables


def synthetic_entry(name: str, arity: int, subcommands: list | None = None) -> list:
    return [name, arity, ["readonly"], 1, 1, 1, ["@read"], [],
            [["flags", ["RO"], "begin_search", ["type", "index", "spec", ["index", 1]],
              "find_keys", ["type", "range", "spec", ["lastkey", 0, "keystep", 1, "limit", 0]]]],
            subcommands or []]


def test_merged_with_adds_a_nodes_new_commands_and_keeps_ours(table: CommandTable):
    node = CommandTable.from_command_reply([
        synthetic_entry("newcmd", 2),
        synthetic_entry("get", -2),
        ["client", -2, [], 0, 0, 0, ["@slow"], [], [],
         [synthetic_entry("client|newsub", 3), synthetic_entry("client|setname", 9)]],
    ])
    merged = table.merged_with(node)
    assert merged.get("newcmd").key_positions(b("NEWCMD", "k")) == [1]
    assert merged.get("get") == table.get("get")
    assert merged.lookup(b("client", "newsub", "k")).name == "client|newsub"
    assert merged.get("client|setname") == table.get("client|setname")
    assert table.get("newcmd") is None


def test_from_command_reply_reads_resp3_maps_and_pre_redis7_entries():
    resp3 = synthetic_entry("r3", -2)
    resp3[8] = [{"flags": ["RO"], "begin_search": {"type": "keyword",
                                                   "spec": {"keyword": "ON", "startfrom": 1}},
                 "find_keys": {"type": "range", "spec": {"lastkey": -1, "keystep": 1,
                                                          "limit": 0}}}]
    legacy = [b"old", -2, [b"write"], 1, -1, 2]  # Redis 6: name arity flags first last step
    built = CommandTable.from_command_reply([resp3, legacy])
    assert built.get("r3").key_positions(b("R3", "x", "ON", "a", "b")) == [3, 4]
    assert built.get("old").key_positions(b("OLD", "a", "1", "b", "2")) == [1, 3]
    assert built.get("old").is_write


# --------------------------------------------------------------------------- deviations


@pytest.mark.parametrize("args", [b("ZUNION", "01", "a"), b("ZUNIONSTORE", "d", "1x", "a"),
                                  b("ZUNION", "4294967297", "a"), b("EVAL", "return 1", "1x", "a")])
def test_numkeys_is_read_as_the_command_reads_it_not_as_getkeys_does(table: CommandTable,
                                                                     conn: RawConnection, args):
    """GETKEYS falls back to atoi() and truncates numkeys to 32 bits, so it lists keys for
    arguments the command itself rejects; we follow the command."""
    getkeys = conn.call("COMMAND", "GETKEYS", *args)
    assert isinstance(getkeys, list) and getkeys
    with pytest.raises(CommandError) as raised:
        positions(table, args)
    assert raised.value.message == str(conn.call(*args))


def test_pfmerge_without_sources_still_has_its_destination_key(table: CommandTable,
                                                               conn: RawConnection):
    """GETKEYS gives up when any key spec is out of range (here: the empty source list), but
    PFMERGE dest runs and creates dest, so it must be routed by dest."""
    args = b("PFMERGE", "pf-dest")
    assert isinstance(conn.call("COMMAND", "GETKEYS", *args), hiredis.ReplyError)
    assert positions(table, args) == [1]
    assert conn.call(*args) == b"OK" and conn.call("EXISTS", "pf-dest") == 1
    conn.call("DEL", "pf-dest")
