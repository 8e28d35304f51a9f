"""Counter splitting (sans-I/O): a write-hot counter spread over sub-keys on other nodes,
each increment going to one of them, a read summing them all. A string counter (INCR,
INCRBY, DECR, DECRBY, INCRBYFLOAT; GET sums) or a hash of counters (HINCRBY, HINCRBYFLOAT;
HGET, HMGET, HGETALL, HKEYS, HVALS, HLEN, HEXISTS read the sum per field).

Sub-key ``i`` of ``key`` is ``{rlsplit-N}key`` where the tag ``rlsplit-N`` is chosen so that
it hashes to node ``i``'s arc: the sub-keys land on distinct nodes without any table. The
key itself is part 0, on its own node, so splitting starts without moving anything and
merging back is folding the sub-keys into it: ``TAKE_SCRIPT`` reads and deletes a sub-key in
one step on its node, ``ADD_SCRIPT`` adds what it held to the key on the owner (an increment
lands either in the sub-key before it is taken, or in the key itself: none is lost).

Opt-in per key pattern: a read of the sum is not atomic (parts are read on several nodes).
"""

from __future__ import annotations

from collections.abc import Callable

from router import resp

SUB_PREFIX = b"{rlsplit-"

#: A string counter's increments go to one part, GET sums them.
STRING_INCREMENTS = frozenset({"incr", "incrby", "decr", "decrby", "incrbyfloat"})
SUMMED_READS = frozenset({"get"})
#: A hash counter's increments go to one part; its reads sum each field over the parts.
HASH_INCREMENTS = frozenset({"hincrby", "hincrbyfloat"})
HASH_READS = frozenset({"hget", "hmget", "hgetall", "hkeys", "hvals", "hlen", "hexists"})
INCREMENTS = STRING_INCREMENTS | HASH_INCREMENTS
HASH_COMMANDS = HASH_INCREMENTS | HASH_READS | frozenset({
    "hset", "hsetnx", "hmset", "hdel", "hstrlen", "hrandfield", "hscan"})
#: Commands on a split hash counter that run on every part, answered by the key's own reply
#: (expiry, type), or by 1 if any part answered 1 (COUNTED). Every other command on a split
#: hash counter is refused until it is folded back: HSET or HDEL on one part would not
#: change the sum the way the client means.
EVERY_PART = frozenset({"expire", "pexpire", "expireat", "pexpireat", "persist", "ttl", "pttl",
                        "expiretime", "pexpiretime", "type", "del", "unlink", "exists", "touch"})
COUNTED = frozenset({"del", "unlink", "exists"})


def node_tags(node_of: Callable[[bytes], int], nodes: int, limit: int = 100_000,
              prefix: bytes = b"rlsplit-") -> dict[int, bytes]:
    """For each node, a hash tag that places keys on it."""
    tags: dict[int, bytes] = {}
    for n in range(limit):
        tag = prefix + b"%d" % n
        node = node_of(tag)
        if node >= 0 and node not in tags:
            tags[node] = tag
            if len(tags) == nodes:
                break
    return tags


#: Folding a part, step 1, on the part's node: its value (a string counter) or its fields
#: (a hash), read and deleted at once, and its name dropped from the node's registry of
#: reserved keys (hotkeys/reserved.py). KEYS: the part, the registry. Replies
#: ``{type, value}``, or ``{type}`` when there is nothing to fold (an unexpected type is
#: left alone and reported).
TAKE_SCRIPT = b"""
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'hash' then
  if kind == 'none' then redis.call('SREM', KEYS[2], KEYS[1]) end
  return {kind}
end
local value
if kind == 'string' then
  value = redis.call('GET', KEYS[1])
else
  value = redis.call('HGETALL', KEYS[1])
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], KEYS[1])
return {kind, value}
"""

#: Folding a part, step 2, on the key's node: add the taken amounts with INCRBY / HINCRBY
#: (INCRBYFLOAT / HINCRBYFLOAT for a fraction, or when the key already holds one). KEYS: the
#: key. ARGV: ``string value`` or ``hash field value ...``. Every addition is tried on its
#: own: the reply lists the ``field value`` pairs that could not be added (the key holds
#: something else), which the caller puts back where they came from rather than lose them.
ADD_SCRIPT = b"""
local function ok(reply)
  return not (type(reply) == 'table' and reply['err'])
end
local function add(field, value)
  if string.match(value, '^%-?%d+$') then
    if field then
      if ok(redis.pcall('HINCRBY', KEYS[1], field, value)) then return true end
    elseif ok(redis.pcall('INCRBY', KEYS[1], value)) then
      return true
    end
  end
  if field then
    return ok(redis.pcall('HINCRBYFLOAT', KEYS[1], field, value))
  end
  return ok(redis.pcall('INCRBYFLOAT', KEYS[1], value))
end
local failed = {}
if ARGV[1] == 'hash' then
  for i = 2, #ARGV, 2 do
    if not add(ARGV[i], ARGV[i + 1]) then
      table.insert(failed, ARGV[i])
      table.insert(failed, ARGV[i + 1])
    end
  end
elseif not add(false, ARGV[2]) then
  failed = {'', ARGV[2]}
end
return failed
"""


def taken_amounts(reply: object) -> tuple[str, list[bytes]]:
    """``TAKE_SCRIPT``'s reply as ``(kind, ADD_SCRIPT's ARGV after the kind)``; the list is
    empty when there is nothing to add (no such part, or a type that is not a counter)."""
    if not isinstance(reply, list) or not reply:
        raise ValueError(f"unexpected reply to the fold script: {reply!r:.80}")
    kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if len(reply) < 2:
        return kind, []
    if kind == "string":
        return kind, [reply[1]]
    return kind, list(reply[1])


def failed_amounts(kind: str, reply: object) -> list[bytes]:
    """``ADD_SCRIPT``'s reply as the ARGV (after the kind) of what is left to put back."""
    pairs = list(reply) if isinstance(reply, list) else []
    if kind == "string":
        return pairs[1:2]
    return pairs


def sub_key(tag: bytes, key: bytes) -> bytes:
    return b"{" + tag + b"}" + key


def original_of(sub: bytes) -> bytes | None:
    """The counter a sub-key belongs to (None if ``sub`` is not one)."""
    if not sub.startswith(SUB_PREFIX):
        return None
    end = sub.find(b"}")
    return sub[end + 1:] if end > 0 else None


def parse_number(raw: bytes) -> int | float | None:
    """An integer reply, or a bulk holding a number (INCRBYFLOAT, GET); None for nil."""
    if raw[:1] == b":":
        return int(raw[1:-2])
    if raw[:1] in (b"$", b"=", b","):
        if raw in (resp.NULL2,):
            return None
        body = raw[raw.find(b"\r\n") + 2:-2] if raw[:1] != b"," else raw[1:-2]
        try:
            return int(body)
        except ValueError:
            return float(body)
    if raw == resp.NULL3:
        return None
    raise ValueError(f"not a number: {raw[:40]!r}")


def is_number(value: bytes) -> bool:
    """Whether a stored value reads as a number (a counter's, as INCRBYFLOAT takes it)."""
    try:
        float(value)
    except ValueError:
        return False
    return True


def encode_number(value: int | float, like: bytes, proto: int) -> bytes:
    """``value`` in the shape of ``like`` (an integer reply, or a bulk for floats/GET)."""
    if like[:1] == b":" and isinstance(value, int):
        return resp.integer(value)
    text = repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, float) and text.endswith(".0"):
        text = text[:-2]
    return resp.bulk(text)


WRONGTYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"

Merge = Callable[[list[bytes], int], bytes]
Calls = list[tuple[int, list[bytes]]]


def add_values(raws: list[bytes], proto: int) -> bytes:
    """One value of a split counter from its parts' replies (bulks or nils): nil if no part
    has it, a lone value as it is, else the sum. Raises ValueError for a value that is not a
    number (a field nobody should have split)."""
    present = [raw for raw in raws if raw != resp.NULL2 and raw != resp.NULL3]
    if not present:
        return resp.null(proto)
    if len(present) == 1:
        return present[0]
    total = 0
    for raw in present:
        value = parse_number(raw)
        if value is None:
            continue
        total += value
    return encode_number(total, b"$", proto)


class SplitCounter:
    """One split key: its parts, the last value seen of each, increments in flight.

    ``kind`` is what the key held when it was split: ``"string"`` (INCR family, GET) or
    ``"hash"`` (HINCRBY / HINCRBYFLOAT per field, HGET and the other hash reads). ``plan``
    decides how each command on the key is served while it is split.
    """

    def __init__(self, key: bytes, parts: list[tuple[int, bytes]], kind: str = "string") -> None:
        self.key = key
        self.parts = parts  # (node, key name); parts[0] is the key itself
        self.kind = kind
        self.values: list[int | float] = [0] * len(parts)
        #: hash counters: per part, the last value seen of each field
        self.fields: list[dict[bytes, int | float]] = [{} for _ in parts]
        self.outstanding = 0  # increments sent to sub-keys, not yet answered
        self._next = 0

    def pick(self) -> int:
        self._next = (self._next + 1) % len(self.parts)
        return self._next

    def record(self, index: int, raw: bytes, field: bytes | None = None) -> None:
        try:
            value = parse_number(raw)
        except ValueError:  # not a counter's value: nothing to remember
            return
        if value is None:
            return
        if field is None:
            self.values[index] = value
        else:
            self.fields[index][field] = value

    def forget(self) -> None:
        """The key is being deleted: the parts' values seen so far no longer add up."""
        self.values = [0] * len(self.parts)
        self.fields = [{} for _ in self.parts]

    def total(self, field: bytes | None = None) -> int | float:
        if field is None:
            return sum(self.values)
        return sum(part.get(field, 0) for part in self.fields)

    # ------------------------------------------------------------------ serving

    def plan(self, name: str, args: list[bytes], merging: bool) -> tuple[Calls, Merge] | bytes | None:
        """How to serve ``args`` (command ``name``, lowercase) on this key: node calls and the
        merge of their replies, a reply at once, or None for the plain route (increments
        while the key is being folded back go to the key itself)."""
        increments = STRING_INCREMENTS if self.kind == "string" else HASH_INCREMENTS
        if name in increments:
            return None if merging else self._increment(args)
        if self.kind == "string":
            if name in HASH_COMMANDS:
                return WRONGTYPE  # as Redis answers on the string the key is
            if name in SUMMED_READS or name in EVERY_PART:
                return self._string_read(name, args)
        else:
            if name in STRING_INCREMENTS or name == "get":
                return WRONGTYPE
            if name in HASH_READS:
                return self._hash_read(name, args)
            if name in EVERY_PART:
                return self._every_part(args), any_part if name in COUNTED else first_part
        # a SET run on every part would multiply the value by the number of parts: refused
        return resp.error(
            f"ERR ringleader: '{name.upper()}' is refused on "
            f"'{self.key.decode(errors='replace')[:64]}' while its counters are split over "
            "nodes (a hot key with mitigation split): increments, reads and expiry are "
            "served; other writes once it has cooled and been folded back")

    def _every_part(self, args: list[bytes]) -> Calls:
        return [(node, [args[0], part, *args[2:]]) for node, part in self.parts]

    def _increment(self, args: list[bytes]) -> tuple[Calls, Merge]:
        index = self.pick()
        node, part = self.parts[index]
        field = args[2] if self.kind == "hash" and len(args) > 2 else None
        self.outstanding += 1

        def reply(parts: list[bytes], proto: int) -> bytes:
            self.outstanding -= 1
            if parts[0][:1] in (b"-", b"!"):
                return parts[0]
            self.record(index, parts[0], field)
            return encode_number(self.total(field), parts[0], proto)

        return [(node, [args[0], part, *args[2:]])], reply

    def _string_read(self, name: str, args: list[bytes]) -> tuple[Calls, Merge]:
        calls = self._every_part(args)
        if name in SUMMED_READS:
            def merge(parts: list[bytes], proto: int) -> bytes:
                for index, raw in enumerate(parts):
                    if raw[:1] not in (b"-", b"!"):
                        self.record(index, raw)
                return sum_parts(parts, proto)
            return calls, merge
        return calls, any_part if name in COUNTED else first_part

    def _hash_read(self, name: str, args: list[bytes]) -> tuple[Calls, Merge]:
        if name == "hexists":
            return self._every_part(args), any_part
        if name == "hget":
            field = args[2] if len(args) > 2 else b""

            def hget(parts: list[bytes], proto: int) -> bytes:
                for index, raw in enumerate(parts):
                    if raw[:1] not in (b"-", b"!"):
                        self.record(index, raw, field)
                return self._summed(parts, proto, lambda: add_values(parts, proto))
            return self._every_part(args), hget
        if name == "hmget":
            fields = args[2:]

            def hmget(parts: list[bytes], proto: int) -> bytes:
                def build() -> bytes:
                    columns = [resp.split_reply_array(p) or [] for p in parts]
                    out = []
                    for i, field in enumerate(fields):
                        raws = [column[i] for column in columns if i < len(column)]
                        for index, column in enumerate(columns):
                            if i < len(column):
                                self.record(index, column[i], field)
                        out.append(add_values(raws, proto))
                    return resp.array_of_raw(out)
                return self._summed(parts, proto, build)
            return self._every_part(args), hmget
        # HGETALL, HKEYS, HVALS, HLEN: every part's fields, summed per field
        calls = [(node, [b"HGETALL", part]) for node, part in self.parts]

        def whole(parts: list[bytes], proto: int) -> bytes:
            def build() -> bytes:
                merged: dict[bytes, list[bytes]] = {}  # field (raw) -> its raw values
                for index, raw in enumerate(parts):
                    items = resp.split_reply_array(raw) or []
                    for i in range(0, len(items) - 1, 2):
                        merged.setdefault(items[i], []).append(items[i + 1])
                        field = _bulk_body(items[i])
                        if field is not None:
                            self.record(index, items[i + 1], field)
                if name == "hlen":
                    return resp.integer(len(merged))
                if name == "hkeys":
                    return resp.array_of_raw(list(merged))
                values = [add_values(raws, proto) for raws in merged.values()]
                if name == "hvals":
                    return resp.array_of_raw(values)
                body = b"".join(f + v for f, v in zip(merged, values, strict=True))
                if parts[0][:1] == b"%":
                    return b"%%%d\r\n" % len(merged) + body
                return b"*%d\r\n" % (2 * len(merged)) + body
            return self._summed(parts, proto, build)
        return calls, whole

    def _summed(self, parts: list[bytes], proto: int, build: Callable[[], bytes]) -> bytes:
        for part in parts:
            if part[:1] in (b"-", b"!"):
                return part
        try:
            return build()
        except ValueError:
            return resp.error(f"ERR ringleader: '{self.key.decode(errors='replace')[:64]}' is "
                              "split as a counter but holds a value that is not a number")


#: Keyspace commands that count keys: a split counter among their keys counts once, over
#: all its parts (DEL deletes every part, EXISTS finds any).
KEY_COUNTS = frozenset({"del", "unlink", "exists", "touch"})


def plan_key_counts(args: list[bytes], counters: dict[bytes, SplitCounter],
                    node_of: Callable[[bytes], int]) -> tuple[Calls, Merge]:
    """DEL / UNLINK / EXISTS / TOUCH naming split counters (``counters``): one call per key,
    or per part of a split key; each key counts 1 if any of its calls answered 1."""
    calls: Calls = []
    sizes: list[int] = []
    for key in args[1:]:
        counter = counters.get(key)
        names = counter.parts if counter is not None else [(node_of(key), key)]
        sizes.append(len(names))
        calls.extend((node, [args[0], name]) for node, name in names)

    def merge(parts: list[bytes], proto: int) -> bytes:
        for part in parts:
            if part[:1] in (b"-", b"!"):
                return part
        total = 0
        start = 0
        for size in sizes:
            total += any(p != b":0\r\n" for p in parts[start:start + size])
            start += size
        return resp.integer(total)

    return calls, merge


def _bulk_body(raw: bytes) -> bytes | None:
    """The bytes of a bulk-string element (a hash field's name)."""
    if raw[:1] != b"$":
        return None
    return raw[raw.find(b"\r\n") + 2:-2]


def sum_parts(parts: list[bytes], proto: int) -> bytes:
    """GET of a split string counter: the parts' values added (nil if none exists)."""
    for part in parts:
        if part[:1] in (b"-", b"!"):
            return part
    values = [parse_number(p) for p in parts]
    present = [v for v in values if v is not None]
    if not present:
        return resp.null(proto)
    return encode_number(sum(present), b"$", proto)


def any_part(parts: list[bytes], proto: int) -> bytes:
    """DEL/UNLINK/EXISTS/HEXISTS of a split counter: 1 if any part answered 1."""
    for part in parts:
        if part[:1] in (b"-", b"!"):
            return part
    return resp.integer(1 if any(p != b":0\r\n" for p in parts) else 0)


def first_part(parts: list[bytes], proto: int) -> bytes:
    """Any other command, run on every part: the key's own reply."""
    return parts[0]
