"""The Redis command table: arity, flags, ACL categories and where each command's keys are.

A proxy must route a command before any node sees it, so it has to find the keys itself, the
same way the server would. The source of truth is the server's own ``COMMAND`` reply (Redis 7:
key specifications per command and subcommand); ``commands.json`` is that reply from
redis-server 7.0.15, recorded by ``python -m router.commands --dump HOST:PORT``, and the same
parser reads a node's live reply so a newer node can teach the proxy newer commands.

Key finding follows the server's ``getKeysFromCommandWithSpecs`` (what ``COMMAND GETKEYS``
answers): the key specs are interpreted generically (index / keyword begin-search, range /
keynum find-keys). The few commands whose specs the server itself does not trust (SORT,
SORT_RO and MIGRATE, whose specs are ``unknown`` or ``incomplete``) have the server's own
key-finding procedure ported as an override, and XREAD/XREADGROUP get the server's fallback
for arguments their spec does not fit.

When the positions cannot be found, :meth:`CommandSpec.key_positions` raises
:class:`CommandError` only where it knows the exact error the command itself would reply with
(wrong arity, a malformed numkeys, MIGRATE's KEYS form with a key); otherwise it returns the
keys it could find (often ``[]``) and leaves the error to whichever node gets the command.

Sans-I/O: only the ``--dump`` entry point opens a socket.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "CASE_CACHE_LIMIT",
    "DEFAULT_JSON",
    "CommandError",
    "CommandSpec",
    "CommandTable",
    "KeySpec",
    "NumkeysRule",
    "arity_error",
    "fetch_command_reply",
    "main",
    "render_json",
    "unknown_command_error",
    "unknown_subcommand_error",
]

DEFAULT_JSON = Path(__file__).with_name("commands.json")

#: Case variants of known names (``Get``, ``gEt``…) remembered by :meth:`CommandTable.lookup`
#: beyond the preloaded lower- and upper-case names. Bounded: a client sending random
#: capitalisations must not grow memory; past the bound a variant costs one ``lower()``.
CASE_CACHE_LIMIT = 4096

_LLONG_MIN = -(1 << 63)
_LLONG_MAX = (1 << 63) - 1
_STRING2LL = re.compile(rb"-?[1-9][0-9]*|0")
_NO_MAX_ARGC = sys.maxsize


class CommandError(Exception):
    """A command the server would reject; ``message`` is its error reply without the ``-``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- error texts


def _c_string(arg: bytes) -> bytes:
    """What C's ``%s`` prints of an argument: everything before the first NUL."""
    nul = arg.find(b"\0")
    return arg if nul < 0 else arg[:nul]


def _error_text(raw: bytes) -> str:
    """The server maps CR and LF to spaces (user text must not break the protocol).

    Decoded with ``surrogateescape`` so ``text.encode("utf-8", "surrogateescape")`` gives the
    server's exact bytes, even when an argument was cut in the middle of a UTF-8 sequence.
    """
    return raw.replace(b"\r", b" ").replace(b"\n", b" ").decode("utf-8", "surrogateescape")


def unknown_command_error(args: Sequence[bytes]) -> str:
    """Redis 7.0's reply to an unknown command, byte for byte.

    The server quotes arguments until their quoted text reaches 128 bytes, cutting the last one
    to the remaining budget, and prints each as C ``%s`` (so up to a NUL byte).
    """
    listed = bytearray()
    for arg in args[1:]:
        if len(listed) >= 128:
            break
        listed += b"'" + _c_string(arg)[: 128 - len(listed)] + b"' "
    name = _c_string(args[0])[:128] if args else b""
    return _error_text(
        b"ERR unknown command '" + name + b"', with args beginning with: " + bytes(listed)
    )


def unknown_subcommand_error(args: Sequence[bytes]) -> str:
    """Redis 7.0's reply when ``args[0]`` is a container command and ``args[1]`` is not one of
    its subcommands (the container name is echoed upper-cased, as the server does)."""
    container = _c_string(args[0]).upper()
    sub = _c_string(args[1])[:128] if len(args) > 1 else b""
    return _error_text(
        b"ERR unknown subcommand '" + sub + b"'. Try " + container + b" HELP."
    )


def arity_error(spec: CommandSpec) -> str:
    """Redis 7.0's wrong-arity reply; subcommands are named ``container|sub`` as the server does.

    A rejected EXEC also discards the transaction, and the server says so in the reply.
    """
    text = f"wrong number of arguments for '{spec.name}' command"
    if spec.name == "exec":
        return "EXECABORT Transaction discarded because of: " + text
    return "ERR " + text


# --------------------------------------------------------------------------- numkeys


def _parse_long_long(arg: bytes) -> int | None:
    """The integer the server's ``string2ll`` reads, or None where it refuses.

    Stricter than ``int()``: no sign ``+``, no spaces, no leading zeros, no ``-0``, no ``_``,
    and the value must fit a signed 64-bit integer.
    """
    if len(arg) > 20 or not _STRING2LL.fullmatch(arg):
        return None
    value = int(arg)
    if value < _LLONG_MIN or value > _LLONG_MAX:
        return None
    return value


@dataclass(frozen=True, slots=True)
class NumkeysRule:
    """How one command family checks its numkeys argument, with its exact error texts.

    The server checks in this order: not an integer, below ``minimum``, more keys than
    arguments. ``{name}`` in a text is replaced by the command's full name.
    """

    not_integer: str
    below_minimum: str
    too_many: str
    minimum: int = 0


_EVAL_RULE = NumkeysRule(
    not_integer="ERR value is not an integer or out of range",
    below_minimum="ERR Number of keys can't be negative",
    too_many="ERR Number of keys can't be greater than number of args",
)
_FCALL_RULE = replace(_EVAL_RULE, not_integer="ERR Bad number of keys provided")
_ZSET_SETOP_RULE = NumkeysRule(
    not_integer="ERR value is not an integer or out of range",
    below_minimum="ERR at least 1 input key is needed for '{name}' command",
    too_many="ERR syntax error",
    minimum=1,
)
_SINTERCARD_RULE = NumkeysRule(
    not_integer="ERR numkeys should be greater than 0",
    below_minimum="ERR numkeys should be greater than 0",
    too_many="ERR Number of keys can't be greater than number of args",
    minimum=1,
)
_MPOP_RULE = NumkeysRule(
    not_integer="ERR numkeys should be greater than 0",
    below_minimum="ERR numkeys should be greater than 0",
    too_many="ERR syntax error",
    minimum=1,
)
#: For keynum commands this module has not met (learned from a newer node): EVAL's texts.
DEFAULT_NUMKEYS_RULE = _EVAL_RULE

#: Per command family, as redis-server 7.0.15 replies (checked by tests/test_commands.py).
NUMKEYS_RULES: Mapping[str, NumkeysRule] = MappingProxyType({
    **dict.fromkeys(("eval", "evalsha", "eval_ro", "evalsha_ro"), _EVAL_RULE),
    **dict.fromkeys(("fcall", "fcall_ro"), _FCALL_RULE),
    **dict.fromkeys(("zunion", "zinter", "zdiff", "zunionstore", "zinterstore", "zdiffstore",
                     "zintercard"), _ZSET_SETOP_RULE),
    "sintercard": _SINTERCARD_RULE,
    **dict.fromkeys(("lmpop", "blmpop", "zmpop", "bzmpop"), _MPOP_RULE),
})


# --------------------------------------------------------------------------- key specs


def _is_keyword(arg: bytes, keyword: bytes) -> bool:
    """C ``strcasecmp(arg, keyword)`` with ``keyword`` lower-case: the arg ends at a NUL."""
    if arg.lower() == keyword:
        return True
    n = len(keyword)
    return arg[n : n + 1] == b"\0" and arg[:n].lower() == keyword


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero), as the server computes ranges."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One Redis 7 key specification: where to start looking, then how to take keys.

    ``begin_search`` is ``"index"`` (``index``), ``"keyword"`` (``keyword`` searched from
    ``startfrom``; a negative ``startfrom`` counts from the end and searches backwards) or
    ``"unknown"``. ``find_keys`` is ``"range"`` (``lastkey`` relative to the first key, or
    from the end when negative, ``keystep``, ``limit``), ``"keynum"`` (the count at
    ``keynumidx``, keys from ``firstkey``, every ``keystep``) or ``"unknown"``. Offsets are as
    the server reports them; ``keyword`` is kept as sent (upper case).
    """

    begin_search: str
    find_keys: str
    flags: frozenset[str] = frozenset()
    index: int = 0
    keyword: str = ""
    startfrom: int = 0
    lastkey: int = 0
    keystep: int = 1
    limit: int = 0
    keynumidx: int = 0
    firstkey: int = 0
    notes: str = ""
    _keyword_lower: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_keyword_lower", self.keyword.lower().encode("utf-8", "surrogateescape")
        )

    @property
    def not_key(self) -> bool:
        """Shard channels (SPUBLISH…) are described like keys but are not keys."""
        return "not_key" in self.flags

    @property
    def incomplete(self) -> bool:
        return "incomplete" in self.flags

    def first_index(self, args: Sequence[bytes]) -> int:
        """Where this spec's keys start in ``args``, 0 when the keyword is absent (the
        server's convention: index 0 is the command name, never a key)."""
        if self.begin_search == "index":
            return self.index
        if self.begin_search != "keyword":
            return 0
        argc = len(args)
        keyword = self._keyword_lower
        if self.startfrom > 0:
            # Forward up to, not including, the last argument: a keyword needs a key after it.
            for i in range(self.startfrom, argc - 1):
                if _is_keyword(args[i], keyword):
                    return i + 1
        elif self.startfrom < 0:
            # Backward down to, not including, index 1 (the server's end_index).
            for i in range(argc + self.startfrom, 1, -1):
                if _is_keyword(args[i], keyword):
                    return i + 1
        return 0


_SPEC_NUMBERS = ("index", "startfrom", "lastkey", "keystep", "limit", "keynumidx", "firstkey")


# --------------------------------------------------------------------------- overrides

#: A command-specific key finder, for commands whose key specs the server does not trust.
KeyFinder = Callable[["CommandSpec", Sequence[bytes]], list[int]]


def _sort_keys(spec: CommandSpec, args: Sequence[bytes]) -> list[int]:
    """SORT: the sorted key, then the destination after the last STORE (server: sortGetKeys).

    LIMIT's two and BY/GET's one argument are skipped so a pattern named "store" is not
    mistaken for the option; BY/GET patterns are not keys.
    """
    argc = len(args)
    store = 0
    i = 2
    while i < argc:
        arg = args[i]
        if _is_keyword(arg, b"limit"):
            i += 2
        elif _is_keyword(arg, b"get") or _is_keyword(arg, b"by"):
            i += 1
        elif i + 1 < argc and _is_keyword(arg, b"store"):
            store = i + 1  # not skipped: the server rescans the destination as an option
        i += 1
    return [1, store] if store else [1]


def _sort_ro_keys(spec: CommandSpec, args: Sequence[bytes]) -> list[int]:
    """SORT_RO has no STORE: only the sorted key (server: sortROGetKeys)."""
    return [1]


_MIGRATE_SKIPS = ((b"copy", 0), (b"replace", 0), (b"auth", 1), (b"auth2", 2))


def _migrate_option_error(args: Sequence[bytes]) -> str:
    """The error MIGRATE replies when KEYS comes with a non-empty key: the server parses the
    options in order, so an unknown option or a short AUTH before KEYS is reported first."""
    argc = len(args)
    j = 6
    while j < argc:
        more = argc - 1 - j
        arg = args[j]
        if _is_keyword(arg, b"copy") or _is_keyword(arg, b"replace"):
            pass
        elif _is_keyword(arg, b"auth"):
            if more < 1:
                break
            j += 1
        elif _is_keyword(arg, b"auth2"):
            if more < 2:
                break
            j += 2
        elif _is_keyword(arg, b"keys"):
            return ("ERR When using MIGRATE KEYS option, the key argument must be set to the "
                    "empty string")
        else:
            break
        j += 1
    return "ERR syntax error"


def _migrate_keys(spec: CommandSpec, args: Sequence[bytes]) -> list[int]:
    """MIGRATE: the key at 3, or with ``KEYS`` every argument after it.

    Mirrors the server exactly: its incomplete KEYS spec (searched backwards from the
    next-to-last argument) decides whether to look further; if found, the options are walked
    forward from 6 (server: migrateGetKeys), skipping AUTH/AUTH2 arguments.
    """
    argc = len(args)
    if not any(_is_keyword(args[i], b"keys") for i in range(argc - 2, 1, -1)):
        return [3]
    first, count = 3, 1
    i = 6
    while i < argc:
        arg = args[i]
        if _is_keyword(arg, b"keys"):
            if args[3]:
                raise CommandError(_migrate_option_error(args))
            first, count = i + 1, argc - i - 1
            break
        for option, skip in _MIGRATE_SKIPS:
            if _is_keyword(arg, option):
                i += skip
                break
        i += 1
    return list(range(first, first + count))


def _xread_keys(spec: CommandSpec, args: Sequence[bytes]) -> list[int]:
    """XREAD/XREADGROUP when the STREAMS spec finds an odd tail: the server then walks the
    options from the start (server: xreadGetKeys), which may reach an earlier STREAMS that the
    spec's search (from its startfrom) skipped."""
    argc = len(args)
    streams = -1
    i = 1
    while i < argc:
        arg = args[i]
        if _is_keyword(arg, b"block") or _is_keyword(arg, b"count"):
            i += 1
        elif _is_keyword(arg, b"group"):
            i += 2
        elif _is_keyword(arg, b"noack"):
            pass
        elif _is_keyword(arg, b"streams"):
            streams = i
            break
        else:
            break
        i += 1
    rest = argc - streams - 1
    if streams < 0 or rest == 0 or rest % 2:
        return []
    return list(range(streams + 1, streams + 1 + rest // 2))


#: Commands whose key specs the server itself marks unknown or incomplete: always used.
KEY_FINDERS: Mapping[str, KeyFinder] = MappingProxyType({
    "sort": _sort_keys,
    "sort_ro": _sort_ro_keys,
    "migrate": _migrate_keys,
})

#: Used, as by the server, only when the key specs do not fit the arguments. (The server's
#: other fallbacks find nothing where the specs fail, except on numkeys, which raises here.)
FALLBACK_KEY_FINDERS: Mapping[str, KeyFinder] = MappingProxyType({
    "xread": _xread_keys,
    "xreadgroup": _xread_keys,
})


# --------------------------------------------------------------------------- command spec


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """Everything the router needs to know about one command or subcommand.

    ``name`` is the lower-case full name (``"get"``, ``"client|setname"``); ``arity`` follows
    Redis (positive: exact argument count including the name; negative: minimum).
    ``acl_categories`` keep the server's ``@`` prefix. ``first_key``/``last_key``/``key_step``
    are the legacy range, kept for completeness; key finding uses ``key_specs``.
    ``subcommands`` maps a container's subcommand short names (``"setname"``) to their specs.
    """

    name: str
    arity: int
    flags: frozenset[str] = frozenset()
    acl_categories: frozenset[str] = frozenset()
    first_key: int = 0
    last_key: int = 0
    key_step: int = 0
    tips: tuple[str, ...] = ()
    key_specs: tuple[KeySpec, ...] = ()
    subcommands: Mapping[str, CommandSpec] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    # Precomputed so the common command costs a length check and a list copy.
    _min_argc: int = field(init=False, repr=False, compare=False, default=0)
    _max_argc: int = field(init=False, repr=False, compare=False, default=0)
    _fast_min: int = field(init=False, repr=False, compare=False, default=0)
    _fixed: tuple[int, ...] | None = field(init=False, repr=False, compare=False, default=None)
    _tail: tuple[int, int, int] | None = field(init=False, repr=False, compare=False,
                                               default=None)
    _finder: KeyFinder | None = field(init=False, repr=False, compare=False, default=None)
    _numkeys: NumkeysRule = field(init=False, repr=False, compare=False,
                                  default=DEFAULT_NUMKEYS_RULE)
    _subs: dict[bytes, CommandSpec] | None = field(init=False, repr=False, compare=False,
                                                   default=None)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        if not isinstance(self.subcommands, MappingProxyType):
            setattr_(self, "subcommands", MappingProxyType(dict(self.subcommands)))
        if self.arity >= 0:
            lo, hi = self.arity, self.arity
        else:
            lo, hi = -self.arity, _NO_MAX_ARGC
        setattr_(self, "_min_argc", lo)
        setattr_(self, "_max_argc", hi)
        finder = KEY_FINDERS.get(self.name)
        setattr_(self, "_finder", finder)
        setattr_(self, "_numkeys", NUMKEYS_RULES.get(self.name, DEFAULT_NUMKEYS_RULE))
        if self.subcommands:
            subs: dict[bytes, CommandSpec] = {}
            for short, sub in self.subcommands.items():
                raw = short.encode("utf-8", "surrogateescape")
                subs[raw.lower()] = sub
                subs[raw.upper()] = sub
            setattr_(self, "_subs", subs)

        real = [ks for ks in self.key_specs if not ks.not_key]
        simple = finder is None and all(
            ks.begin_search == "index" and ks.find_keys == "range" and not ks.incomplete
            and ks.keystep > 0 for ks in real
        )
        fast_min = _NO_MAX_ARGC  # no fast path unless one is proven below
        if simple and all(ks.lastkey >= 0 for ks in real):
            fixed: list[int] = []
            for ks in real:
                fixed.extend(range(ks.index, ks.index + ks.lastkey + 1, ks.keystep))
            setattr_(self, "_fixed", tuple(fixed))
            fast_min = max(lo, max(fixed, default=0) + 1)
        elif simple and len(real) == 1 and real[0].limit == 0:
            ks = real[0]
            setattr_(self, "_tail", (ks.index, ks.lastkey + 1, ks.keystep))
            # The range is valid once the first key exists and the last is not before it.
            fast_min = max(lo, ks.index + 1, ks.index - ks.lastkey)
        setattr_(self, "_fast_min", fast_min)

    @property
    def fixed_key_positions(self) -> tuple[int, ...] | None:
        """Where the keys are when that depends on nothing else (GET: ``(1,)``; MGET, EVAL:
        None): a valid request has them all, an invalid one may lack the later ones."""
        return self._fixed

    # ---- flags

    @property
    def is_write(self) -> bool:
        return "write" in self.flags

    @property
    def is_readonly(self) -> bool:
        return "readonly" in self.flags

    @property
    def is_blocking(self) -> bool:
        return "blocking" in self.flags

    @property
    def movable_keys(self) -> bool:
        """Key positions depend on the arguments (numkeys, keywords), not only on argc."""
        return "movablekeys" in self.flags

    @property
    def has_keys(self) -> bool:
        """Whether any argument can be a key (shard channels do not count)."""
        return any(not ks.not_key for ks in self.key_specs)

    @property
    def is_container(self) -> bool:
        return bool(self.subcommands)

    # ---- arguments

    def check_arity(self, argc: int) -> bool:
        """Whether the server accepts ``argc`` arguments (the name included) for dispatch."""
        return self._min_argc <= argc <= self._max_argc

    def key_positions(self, args: Sequence[bytes]) -> list[int]:
        """Indices into ``args`` of every key, in the server's order, duplicates kept.

        ``args[0]`` is the command name (and ``args[1]`` the subcommand of a container).
        Matches ``COMMAND GETKEYS`` whenever that finds keys. Raises :class:`CommandError`,
        with the server's text, for a wrong argument count or a malformed numkeys; returns
        what it could find (possibly ``[]``) where the server would reply some other error.
        """
        n = len(args)
        if self._fast_min <= n <= self._max_argc:
            fixed = self._fixed
            if fixed is not None:
                return list(fixed)
            tail = self._tail
            if tail is not None:
                return list(range(tail[0], n + tail[1], tail[2]))
        return self._general_positions(args, False)

    def channel_positions(self, args: Sequence[bytes]) -> list[int]:
        """Indices of the shard channels (SPUBLISH, SSUBSCRIBE, SUNSUBSCRIBE): specs marked
        ``not_key`` that a cluster nevertheless hashes like keys."""
        return self._general_positions(args, True)

    def _general_positions(self, args: Sequence[bytes], not_keys: bool) -> list[int]:
        argc = len(args)
        if not self._min_argc <= argc <= self._max_argc:
            raise CommandError(arity_error(self))
        if self._finder is not None and not not_keys:
            return self._finder(self, args)
        positions: list[int] = []
        fits = True
        for ks in self.key_specs:
            if ks.not_key != not_keys:
                continue
            first = ks.first_index(args)
            if first <= 0:
                fits = fits and ks.begin_search == "keyword"  # an absent keyword is no error
                continue
            if ks.find_keys == "range":
                if ks.lastkey >= 0:
                    last = first + ks.lastkey
                elif not ks.limit:
                    last = argc + ks.lastkey
                else:
                    last = first + _c_div(argc - first, ks.limit) + ks.lastkey
            elif ks.find_keys == "keynum":
                at = first + ks.keynumidx
                if at >= argc:
                    fits = False
                    continue
                first += ks.firstkey
                last = first + self._numkeys_of(args[at], argc - first) - 1
            else:
                fits = False
                continue
            if last >= argc or last < first or first >= argc:
                fits = False  # out of bounds: the command will reply a syntax error itself
                continue
            positions.extend(range(first, last + 1, max(ks.keystep, 1)))
            fits = fits and not ks.incomplete
        if not fits and not not_keys:
            fallback = FALLBACK_KEY_FINDERS.get(self.name)
            if fallback is not None:
                return fallback(self, args)
        # Otherwise keep what the fitting specs found (the server would answer GETKEYS with
        # an error): routing by those keys is right for every 7.0 command, and the best guess
        # for a command learned from a newer node.
        return positions

    def _numkeys_of(self, arg: bytes, available: int) -> int:
        rule = self._numkeys
        numkeys = _parse_long_long(arg)
        if numkeys is None:
            raise CommandError(rule.not_integer.format(name=self.name))
        if numkeys < rule.minimum:
            raise CommandError(rule.below_minimum.format(name=self.name))
        if numkeys > available:
            raise CommandError(rule.too_many.format(name=self.name))
        return numkeys


# --------------------------------------------------------------------------- parsing


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _pairs(value: Any) -> dict[str, Any]:
    """A RESP3 map, or its RESP2 form (a flat key/value array), as a dict."""
    if isinstance(value, Mapping):
        return {_text(k): v for k, v in value.items()}
    items = list(value or ())
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _parse_key_spec(raw: Any) -> KeySpec:
    entry = _pairs(raw)
    begin = _pairs(entry.get("begin_search", ()))
    find = _pairs(entry.get("find_keys", ()))
    numbers: dict[str, int] = {}
    keyword = ""
    for part in (_pairs(begin.get("spec", ())), _pairs(find.get("spec", ()))):
        for key, value in part.items():
            if key == "keyword":
                keyword = _text(value)
            elif key in _SPEC_NUMBERS:
                numbers[key] = int(value)
    return KeySpec(
        begin_search=_text(begin.get("type", "unknown")),
        find_keys=_text(find.get("type", "unknown")),
        flags=frozenset(_text(f) for f in entry.get("flags", ()) or ()),
        keyword=keyword,
        notes=_text(entry.get("notes", "")),
        **numbers,
    )


def _legacy_key_spec(first: int, last: int, step: int) -> tuple[KeySpec, ...]:
    """Servers before Redis 7 only give (first, last, step); express it as a range spec."""
    if first <= 0:
        return ()
    lastkey = last - first if last >= 0 else last
    return (KeySpec("index", "range", frozenset(), index=first, lastkey=lastkey,
                    keystep=max(step, 1)),)


def _parse_command(raw: Sequence[Any]) -> CommandSpec:
    """One entry of the ``COMMAND`` reply: name, arity, flags, first, last, step, then (Redis 7)
    ACL categories, tips, key specs and subcommands."""
    name = _text(raw[0]).lower()
    arity, first, last, step = int(raw[1]), int(raw[3]), int(raw[4]), int(raw[5])
    extra = list(raw[6:]) + [()] * (10 - len(raw))
    acl, tips, specs, subs = extra[:4]
    key_specs = (tuple(_parse_key_spec(ks) for ks in specs) if len(raw) > 8
                 else _legacy_key_spec(first, last, step))
    subcommands = {}
    for sub_raw in subs or ():
        sub = _parse_command(sub_raw)
        subcommands[sub.name.partition("|")[2] or sub.name] = sub
    return CommandSpec(
        name=name,
        arity=arity,
        flags=frozenset(_text(f).lower() for f in raw[2] or ()),
        acl_categories=frozenset(_text(c) for c in acl or ()),
        first_key=first,
        last_key=last,
        key_step=step,
        tips=tuple(_text(t) for t in tips or ()),
        key_specs=key_specs,
        subcommands=subcommands,
    )


# --------------------------------------------------------------------------- the table


class CommandTable:
    """All commands by name, with the fast, case-insensitive lookup the data path needs."""

    __slots__ = ("_commands", "_names", "_case_cached")

    _default: CommandTable | None = None

    def __init__(self, specs: Iterable[CommandSpec]) -> None:
        self._commands: dict[str, CommandSpec] = {spec.name: spec for spec in specs}
        self._names: dict[bytes, CommandSpec] = {}
        for name, spec in self._commands.items():
            raw = name.encode("utf-8", "surrogateescape")
            self._names[raw] = spec
            self._names[raw.upper()] = spec
        self._case_cached = 0

    # ---- construction

    @classmethod
    def default(cls) -> CommandTable:
        """The shipped table (redis-server 7.0.15), parsed once per process."""
        if cls._default is None:
            data = json.loads(DEFAULT_JSON.read_text(encoding="utf-8"))
            cls._default = cls.from_command_reply(data["commands"])
        return cls._default

    @classmethod
    def from_command_reply(cls, reply: Iterable[Any]) -> CommandTable:
        """Build from a ``COMMAND`` reply: raw RESP2 (bytes), RESP3 maps, or its JSON form."""
        return cls(_parse_command(entry) for entry in reply)

    def merged_with(self, other: CommandTable) -> CommandTable:
        """This table plus the commands (and subcommands) only ``other`` knows; where both
        know one, ours wins, so a node cannot change how known commands are routed."""
        merged = dict(self._commands)
        for name, theirs in other._commands.items():
            ours = merged.get(name)
            if ours is None:
                merged[name] = theirs
            elif theirs.subcommands:
                extra = {k: v for k, v in theirs.subcommands.items() if k not in ours.subcommands}
                if extra:
                    merged[name] = replace(ours, subcommands={**ours.subcommands, **extra})
        return CommandTable(merged.values())

    # ---- queries

    def __len__(self) -> int:
        return len(self._commands)

    def __iter__(self) -> Iterator[CommandSpec]:
        return iter(self._commands.values())

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def get(self, name: str) -> CommandSpec | None:
        """A command or subcommand by full name (``"get"``, ``"client|setname"``), any case."""
        container, _, sub = name.lower().partition("|")
        spec = self._commands.get(container)
        if spec is None or not sub:
            return spec
        return spec.subcommands.get(sub)

    def keys_of(self, args: Sequence[bytes]) -> list[bytes]:
        """The keys a request names ([] for unknown or malformed ones): what the proxy and
        the library move before a request for a moving arc runs."""
        spec = self.lookup(args)
        if spec is None:
            return []
        try:
            return [args[p] for p in spec.key_positions(args)]
        except CommandError:
            return []

    def reads_in_place(self, args: Sequence[bytes]) -> bool:
        """Whether a request only reads its keys and never blocks: during a migration it may
        run where its keys are (inside MULTI, so never a blocking command) instead of moving
        them first."""
        spec = self.lookup(args)
        return spec is not None and "readonly" in spec.flags and "blocking" not in spec.flags

    def all_specs(self) -> Iterator[CommandSpec]:
        """Every command and every subcommand."""
        for spec in self._commands.values():
            yield spec
            yield from spec.subcommands.values()

    def lookup(self, args: Sequence[bytes]) -> CommandSpec | None:
        """The spec for a request (``args`` non-empty), resolving a container's subcommand.

        Returns the container's own spec when the subcommand is missing (its arity then
        fails), and None for an unknown command or subcommand. The usual case is one dict hit
        on the name exactly as sent.
        """
        try:
            spec = self._names[args[0]]
        except KeyError:
            spec = self._lookup_case_variant(args[0])
            if spec is None:
                return None
        subs = spec._subs
        if subs is None or len(args) < 2:
            return spec
        sub = subs.get(args[1])
        if sub is None:
            sub = subs.get(args[1].lower())
        return sub

    def _lookup_case_variant(self, name: bytes) -> CommandSpec | None:
        spec = self._names.get(name.lower())
        if spec is not None and self._case_cached < CASE_CACHE_LIMIT:
            self._names[name] = spec
            self._case_cached += 1
        return spec

    def resolve(self, args: Sequence[bytes]) -> CommandSpec:
        """The spec for a request the server would dispatch, else :class:`CommandError` with
        the server's reply (unknown command, unknown subcommand, wrong number of arguments)."""
        spec = self.lookup(args)
        if spec is None:
            if len(args) > 1 and self.is_container_name(args[0]):
                raise CommandError(unknown_subcommand_error(args))
            raise CommandError(unknown_command_error(args))
        if not spec.check_arity(len(args)):
            raise CommandError(arity_error(spec))
        return spec

    def is_container_name(self, name: bytes) -> bool:
        spec = self._names.get(name) or self._names.get(name.lower())
        return spec is not None and spec._subs is not None

    # ---- error texts (without the leading "-")

    @staticmethod
    def unknown_command_error(args: Sequence[bytes]) -> str:
        return unknown_command_error(args)

    @staticmethod
    def unknown_subcommand_error(args: Sequence[bytes]) -> str:
        return unknown_subcommand_error(args)

    @staticmethod
    def arity_error(spec: CommandSpec) -> str:
        return arity_error(spec)


# --------------------------------------------------------------------------- dumping


def _decode_reply(value: Any) -> Any:
    """The reply as JSON values: bytes become text, nesting and integers are kept as sent."""
    if isinstance(value, bytes | bytearray):
        return _text(value)
    if isinstance(value, Mapping):
        return {_text(k): _decode_reply(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decode_reply(v) for v in value]
    return value


def _sorted_entry(entry: list[Any]) -> list[Any]:
    """Subcommands sorted by name, so regenerating gives a stable diff (order is not meaning)."""
    if len(entry) > 9 and entry[9]:
        entry = [*entry[:9], sorted((_sorted_entry(s) for s in entry[9]), key=lambda s: s[0])]
    return entry


def render_json(reply: Iterable[Any], server: str) -> str:
    """``commands.json`` text: compact, one command per line, sorted by name."""
    entries = sorted((_sorted_entry(_decode_reply(e)) for e in reply), key=lambda e: e[0])
    lines = [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in entries]
    head = json.dumps({"server": server}, separators=(",", ":"))[:-1]
    return head + ',"commands":[\n' + ",\n".join(lines) + "\n]}\n"


def fetch_command_reply(host: str, port: int, timeout: float = 10.0) -> tuple[list[Any], str]:
    """The raw ``COMMAND`` reply and the server's version, over one plain RESP2 connection."""
    import socket

    import hiredis

    reader = hiredis.Reader()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$7\r\nCOMMAND\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        replies: list[Any] = []
        while len(replies) < 2:
            reply = reader.gets()
            if reply is False:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError(f"{host}:{port} closed the connection")
                reader.feed(chunk)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise CommandError(str(reply))
            replies.append(reply)
    info = _text(replies[1])
    found = re.search(r"^redis_version:(\S+)", info, re.MULTILINE)
    version = f"redis-server {found.group(1)}" if found else "unknown"
    return replies[0], version


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m router.commands",
        description="Regenerate the command table from a live server's COMMAND reply.",
    )
    parser.add_argument("--dump", metavar="HOST:PORT", required=True,
                        help="server to read COMMAND from")
    parser.add_argument("-o", "--output", default="-",
                        help="file to write (default: stdout), e.g. router/commands.json")
    options = parser.parse_args(argv)
    host, _, port = options.dump.rpartition(":")
    reply, server = fetch_command_reply(host or "127.0.0.1", int(port))
    CommandTable.from_command_reply(reply)  # refuse to write what we could not read back
    text = render_json(reply, server)
    if options.output == "-":
        sys.stdout.write(text)
    else:
        Path(options.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
