"""RESP on the wire, without sockets: request framing, reply boundaries, proxy-made replies.

Node replies pass through the proxy verbatim (each node connection speaks the client's
protocol), so the proxy only needs to know where one reply ends: ``reply_end``. Replies the
proxy makes itself are encoded per client protocol (RESP2 or RESP3) here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import hiredis

CRLF = b"\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"
NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"

pack_command = hiredis.pack_command

#: ``$<n>\r\n`` for every n below 1024: a request of two or three arguments (GET key, SET
#: key value: most of a proxy's traffic) is then one ``bytes.join`` of ready pieces, half the
#: cost of ``pack_command``, which stays for longer values and other shapes.
#: ``BULK_HEADS[len(value)]`` raises IndexError past the table.
BULK_HEADS = [b"$%d\r\n" % n for n in range(1024)]

#: The start of a request, up to and including its command name, by argument count and name
#: as the client spelled it (``GET``, ``get``...); filled by ``request_head``.
HEADS: dict[int, dict[bytes, bytes]] = {2: {}, 3: {}}
_MAX_HEADS = 512  # spellings kept per count: a client inventing casings cannot grow this


def request_head(count: int, name: bytes) -> bytes:
    r"""``*<count>\r\n$<len>\r\n<name>\r\n``, kept in ``HEADS`` for the next request;
    TypeError when ``name`` is not bytes (the caller then falls back to ``pack_command``)."""
    if type(name) is not bytes:
        raise TypeError("a command name must be bytes")
    head = b"*%d\r\n$%d\r\n%b\r\n" % (count, len(name), name)
    known = HEADS[count]
    if len(known) < _MAX_HEADS:
        known[name] = head
    return head


class ProtocolError(Exception):
    """The peer broke RESP framing: the connection cannot be trusted past this point."""


# ---------------------------------------------------------------- replies the proxy makes


def error(message: str) -> bytes:
    """An error reply; ``message`` starts with its code (``ERR``, ``CROSSSLOT``...)."""
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + CRLF


def simple(text: str | bytes) -> bytes:
    if isinstance(text, str):
        text = text.encode()
    return b"+" + text + CRLF


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(value: bytes | str | None, proto: int = 2) -> bytes:
    if value is None:
        return NULL3 if proto == 3 else NULL2
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def null(proto: int) -> bytes:
    return NULL3 if proto == 3 else NULL2


def array_of_raw(items: Sequence[bytes]) -> bytes:
    """An array whose elements are already-encoded replies (passed through from nodes)."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def encode(value: object, proto: int = 2) -> bytes:
    """Python value to RESP: bytes/str → bulk, int → integer, None → null, list → array,
    dict → map (a flat array in RESP2), set → set (an array in RESP2), float → double (a bulk
    in RESP2), bool → integer 0/1 (boolean in RESP3)."""
    if isinstance(value, bytes | str):
        return bulk(value)
    if isinstance(value, bool):
        if proto == 3:
            return b"#t\r\n" if value else b"#f\r\n"
        return integer(int(value))
    if isinstance(value, int):
        return integer(value)
    if value is None:
        return null(proto)
    if isinstance(value, float):
        if proto == 3:
            return b",%s\r\n" % repr(value).encode()
        return bulk(repr(value))
    if isinstance(value, dict):
        head = b"%%%d\r\n" % len(value) if proto == 3 else b"*%d\r\n" % (2 * len(value))
        return head + b"".join(encode(k, proto) + encode(v, proto) for k, v in value.items())
    if isinstance(value, set | frozenset):
        head = b"~%d\r\n" % len(value) if proto == 3 else b"*%d\r\n" % len(value)
        return head + b"".join(encode(v, proto) for v in value)
    if isinstance(value, list | tuple):
        return b"*%d\r\n" % len(value) + b"".join(encode(v, proto) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__} as RESP")


def verbatim(text: str, proto: int) -> bytes:
    """Human-readable text (INFO, CLIENT LIST): a verbatim string in RESP3, a bulk in RESP2."""
    data = text.encode()
    if proto == 3:
        return b"=%d\r\ntxt:%s\r\n" % (len(data) + 4, data)
    return bulk(data)


# ---------------------------------------------------------------- reply boundaries

_LINE_TYPES = frozenset(b"+-:_,#(")  # simple string, error, integer, null, double, bool, bignum
_BLOB_TYPES = frozenset(b"$=!")  # bulk, verbatim, blob error
_AGGREGATE_TYPES = frozenset(b"*~>")  # array, set, push: n elements
_PAIR_TYPES = frozenset(b"%|")  # map, attribute: 2n elements


def reply_end(buf: bytes, pos: int, n: int) -> int:
    """End offset of the complete reply that starts at ``buf[pos]``, or -1 if it is not all
    in ``buf[:n]`` yet. Handles every RESP2 and RESP3 type; an attribute (``|``) is returned
    together with the reply it annotates."""
    t = buf[pos]
    nl = buf.find(CRLF, pos)
    if nl < 0 or nl + 2 > n:
        return -1
    if t in _LINE_TYPES:
        return nl + 2
    try:
        length = int(buf[pos + 1:nl])
    except ValueError:
        raise ProtocolError(f"bad length in reply header {bytes(buf[pos:nl])[:40]!r}") from None
    if t in _BLOB_TYPES:
        if length < 0:
            return nl + 2
        end = nl + 4 + length
        return end if end <= n else -1
    if t in _AGGREGATE_TYPES or t in _PAIR_TYPES:
        if length < 0:
            return nl + 2
        count = length * 2 if t in _PAIR_TYPES else length
        p = nl + 2
        for _ in range(count):
            if p >= n:
                return -1
            if buf[p] == 36:  # '$': bulk elements (MGET, LRANGE...) without a call each
                nl = buf.find(CRLF, p)
                if nl < 0:
                    return -1
                length = int(buf[p + 1:nl])
                p = nl + 4 + length if length >= 0 else nl + 2
                if p > n:
                    return -1
                continue
            p = reply_end(buf, p, n)
            if p < 0:
                return -1
        if t == 0x7C:  # attribute: the annotated reply follows
            if p >= n:
                return -1
            return reply_end(buf, p, n)
        return p
    raise ProtocolError(f"unknown reply type byte {chr(t)!r}")


def split_reply_array(raw: bytes) -> list[bytes] | None:
    """The elements of an array, set or map reply (a map's keys and values alternating) as
    raw bytes, or None if ``raw`` is none of those (an error, say). Used to merge fan-out
    replies such as MGET's."""
    if not raw or raw[0] not in (0x2A, 0x7E, 0x25):  # '*', '~' or '%'
        return None
    nl = raw.find(CRLF)
    count = int(raw[1:nl])
    if count < 0:
        return None
    if raw[0] == 0x25:
        count *= 2
    items = []
    pos = nl + 2
    n = len(raw)
    for _ in range(count):
        if raw[pos] == 36:  # '$': the usual element (MGET values)
            nl = raw.find(CRLF, pos)
            length = int(raw[pos + 1:nl])
            end = nl + 4 + length if length >= 0 else nl + 2
        else:
            end = reply_end(raw, pos, n)
        if end < 0 or end > n:
            raise ProtocolError("truncated array reply")
        items.append(raw[pos:end])
        pos = end
    return items


def bulk_end(buf: bytes, pos: int, n: int) -> tuple[int, bytes | None]:
    """End of the bulk reply at ``buf[pos]`` (a ``$``), -1 while it is not all in
    ``buf[:n]``; and its header (``$<len>\r\n``) when it holds a value (not a null), which
    the callers keep: a next reply starting with the same header has the same length, so
    they frame it with one ``startswith`` and never call this (nor for ``$-1``)."""
    nl = buf.find(CRLF, pos)
    if nl < 0:
        return -1, None
    length = int(buf[pos + 1:nl])
    if length < 0:
        return nl + 2, None
    end = nl + 4 + length
    return (end, buf[pos:nl + 2]) if end <= n else (-1, None)


def array_elements(buf: bytes, pos: int, n: int) -> tuple[int, list[bytes] | None]:
    """Frame the reply at ``buf[pos]`` and, when it is an array, cut out its elements (raw)
    in the same scan: ``(end, elements)``, ``end`` -1 while incomplete, ``elements`` None for
    a reply of another type. A merge that takes arrays apart (MGET's) then never scans twice.
    """
    if buf[pos] != 42:  # '*'
        return reply_end(buf, pos, n), None
    nl = buf.find(CRLF, pos)
    if nl < 0 or nl + 2 > n:
        return -1, None
    count = int(buf[pos + 1:nl])
    if count < 0:
        return nl + 2, None
    startswith = buf.startswith
    head, size = b"\0", 0  # the last value's header and length: like values need no parse
    items = []
    p = nl + 2
    for _ in range(count):
        if p >= n:
            return -1, None
        if startswith(head, p):
            end = p + size
            if end > n:
                return -1, None
        elif startswith(NULL2, p):  # a missing key's null
            end = p + 5
            if end > n:
                return -1, None
        elif buf[p] == 36:  # '$': MGET's values
            end, header = bulk_end(buf, p, n)
            if end < 0:
                return -1, None
            if header is not None:
                head, size = header, end - p
        else:
            end = reply_end(buf, p, n)
            if end < 0:
                return -1, None
        items.append(buf[p:end])
        p = end
    return p, items


def parse_integer(raw: bytes) -> int | None:
    """The value of an integer reply, or None for any other reply."""
    if raw[:1] != b":":
        return None
    return int(raw[1:-2])


# ---------------------------------------------------------------- requests from clients


class RequestLimits:
    """What one request may claim before it is refused (without buffering what it claims)."""

    __slots__ = ("max_bulk", "max_args", "max_inline")

    def __init__(self, max_bulk: int = 512 * 1024 * 1024, max_args: int = 1024 * 1024,
                 max_inline: int = 64 * 1024) -> None:
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_inline = max_inline


class RequestReader:
    """Frames a client's byte stream into requests (lists of bytes arguments).

    hiredis parses multibulk requests in C. What hiredis cannot do for a server, this class
    adds: inline commands and limits.

    Inline commands (``PING\\r\\n`` typed into telnet) are a mode of the connection, chosen
    by its first byte: a connection that starts with ``*`` is multibulk for good, so bytes
    inside a request can never be taken for an inline command.

    hiredis does not say where a request started, so the limits work from what is known
    cheaply: the bytes buffered since the last completed request bound the size of the
    request in progress, and past ``max_bulk`` (plus headers) it is refused, so memory stays
    bounded. When a read appears to start at a request boundary (the previous read ended with
    the encoding of the last completed request's final argument), the headers it shows are
    checked at once, so a request declaring too many arguments or an oversized bulk is
    refused before its payload is buffered. That check only ever refuses; a read that merely
    looks like a boundary can at worst refuse a request whose payload mimics an oversized
    header, never run anything.
    """

    __slots__ = ("_reader", "limits", "_growing", "_at_boundary", "_max_request", "_carry",
                 "_inline", "_tail")

    def __init__(self, limits: RequestLimits | None = None) -> None:
        self._reader = hiredis.Reader()
        self.limits = limits or RequestLimits()
        self._growing = 0  # bytes fed since the last read that completed a request
        self._at_boundary = True  # the next byte starts a new request
        self._max_request = self.limits.max_bulk + 64 * 1024
        self._carry = b""
        self._inline: bool | None = None  # decided by the connection's first byte
        self._tail: tuple[bytes, list[bytes], bool] | None = None

    def feed(self, data: bytes) -> list[list[bytes]]:
        """All requests completed by ``data``; raises ProtocolError on malformed or oversized
        input (the caller replies with the error and closes the connection)."""
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if self._inline is None and data:
            self._inline = data[:1] != b"*"
        if self._inline:
            return self._feed_inline(data, [])
        reader = self._reader
        reader.feed(data)
        requests: list[list[bytes]] = []
        gets, append = reader.gets, requests.append
        try:
            request = gets()
            while request is not False:
                if type(request) is not list:
                    raise ProtocolError(f"expected '*', got a {type(request).__name__}")
                append(request)
                request = gets()
        except hiredis.ProtocolError as exc:
            raise ProtocolError(_clean_hiredis_error(exc)) from None
        if requests:
            self._growing = 0
            # whether the next read starts a request is only worth knowing if that read
            # completes nothing (a large request): keep what is needed to tell, lazily
            self._at_boundary = False
            self._tail = (data, requests[-1], reader.has_data())
        else:
            if self._tail is not None:
                data_before, last_request, unparsed = self._tail
                self._tail = None
                last = last_request[-1] if last_request else None
                self._at_boundary = (
                    not unparsed and type(last) is bytes and len(last) <= 4096
                    and data_before.endswith(b"$%d\r\n%s\r\n" % (len(last), last)))
            if self._at_boundary:
                check_request_head(data[:4096], self.limits)
                self._at_boundary = False
            self._growing += len(data)
            if self._growing > self._max_request:
                raise ProtocolError(
                    f"request larger than {self._max_request} bytes (limits.max_bulk_bytes)")
        return requests

    def _feed_inline(self, data: bytes, requests: list[list[bytes]]) -> list[list[bytes]]:
        """Inline commands: one per line, words split on spaces, until a multibulk begins."""
        pos = 0
        n = len(data)
        while pos < n and data[pos:pos + 1] != b"*":
            nl = data.find(b"\n", pos)
            if nl < 0:
                if n - pos > self.limits.max_inline:
                    raise ProtocolError("too big inline request")
                self._carry = data[pos:]  # an inline line split across reads
                return requests
            words = data[pos:nl].rstrip(b"\r").split()
            if words:
                requests.append(words)
            pos = nl + 1
        if pos < n:  # a multibulk request: from here on the connection is multibulk
            self._inline = False
            requests.extend(self.feed(data[pos:]))
        return requests


def check_request_head(head: bytes, limits: RequestLimits) -> None:
    """Refuse a multibulk request whose visible headers claim more than the limits allow."""
    if head[:1] != b"*":
        return
    nl = head.find(CRLF)
    if nl < 0:
        if len(head) > 32:
            raise ProtocolError("invalid multibulk length")
        return
    try:
        count = int(head[1:nl])
    except ValueError:
        raise ProtocolError("invalid multibulk length") from None
    if count > limits.max_args:
        raise ProtocolError(
            f"request has {count} arguments, over the limit of {limits.max_args} (limits.max_args)")
    pos = nl + 2
    for _ in range(min(count, 64)):
        if head[pos:pos + 1] != b"$":
            return
        nl = head.find(CRLF, pos)
        if nl < 0:
            return
        try:
            length = int(head[pos + 1:nl])
        except ValueError:
            raise ProtocolError("invalid bulk length") from None
        if length > limits.max_bulk:
            raise ProtocolError(
                f"bulk length {length} over the limit of {limits.max_bulk} bytes "
                "(limits.max_bulk_bytes)")
        pos = nl + 2 + length + 2
        if pos >= len(head):
            return


def _clean_hiredis_error(exc: Exception) -> str:
    text = str(exc)
    return text.removeprefix("Protocol error, ").strip() or "malformed request"


def words(items: Iterable[str]) -> list[bytes]:
    """Command arguments from text (tests, the library client, admin commands)."""
    return [item.encode() if isinstance(item, str) else item for item in items]
