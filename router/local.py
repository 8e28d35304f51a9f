"""Commands the proxy answers itself: connection state that belongs to the client's link to
the proxy (protocol, name, database), and facts about the proxy rather than any one node.

Each handler takes the request and the client session and returns the encoded reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import __version__, resp
from .routes import Route, Sink

#: The Redis version the proxy reports in HELLO and INFO: the command surface it implements.
REDIS_COMPAT_VERSION = "7.0.0"

Handler = Callable[[list[bytes], object], bytes]


def ping(args: list[bytes], session) -> bytes:
    if getattr(session, "subscribed_resp2", False):  # Redis's reply in subscribed mode
        return b"*2\r\n$4\r\npong\r\n" + resp.bulk(args[1] if len(args) > 1 else b"")
    if len(args) == 1:
        return resp.PONG
    if len(args) == 2:
        return resp.bulk(args[1])
    return resp.error("ERR wrong number of arguments for 'ping' command")


def echo(args: list[bytes], session) -> bytes:
    return resp.bulk(args[1])


def quit_(args: list[bytes], session) -> bytes:
    session.close_after_reply()
    return resp.OK


def select(args: list[bytes], session) -> bytes:
    try:
        db = int(args[1])
    except ValueError:
        return resp.error("ERR value is not an integer or out of range")
    if db == 0:
        return resp.OK
    return resp.error(
        f"ERR ringleader serves database 0 only: SELECT {db} is not supported by a sharding "
        "proxy (use key prefixes, or a separate pool)")


def hello(args: list[bytes], session) -> bytes:
    proto = session.proto
    if len(args) >= 2:
        try:
            proto = int(args[1])
        except ValueError:
            return resp.error("ERR Protocol version is not an integer or out of range")
        if proto not in (2, 3):
            return resp.error("NOPROTO unsupported protocol version")
    i = 2
    name = None
    credentials = None
    while i < len(args):
        option = args[i].upper()
        if option == b"AUTH" and i + 2 < len(args):
            credentials = (args[i + 1], args[i + 2])
            i += 3
        elif option == b"SETNAME" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            return resp.error(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    if credentials is not None:
        refused = session.authenticate(credentials[0], credentials[1])
        if refused is not None:
            return refused
    elif not session.authenticated:
        return resp.error("NOAUTH HELLO must be called with the client already authenticated, "
                          "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                          "authenticate the client and select the RESP protocol version at the "
                          "same time")
    if name is not None:
        refused = _check_name(name)
        if refused is not None:
            return refused
        session.name = name
    session.set_proto(proto)
    return resp.encode({
        "server": "redis",
        "version": REDIS_COMPAT_VERSION,
        "proto": proto,
        "id": session.client_id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
        "proxy": f"ringleader {__version__}",
    }, proto)


def _check_name(name: bytes) -> bytes | None:
    if any(c <= 32 or c > 126 for c in name):
        return resp.error("ERR Client names cannot contain spaces, newlines or special characters.")
    return None


def client_setname(args: list[bytes], session) -> bytes:
    refused = _check_name(args[2])
    if refused is not None:
        return refused
    session.name = args[2] or None
    return resp.OK


def client_getname(args: list[bytes], session) -> bytes:
    return resp.bulk(session.name, session.proto)


def client_id(args: list[bytes], session) -> bytes:
    return resp.integer(session.client_id)


def client_setinfo(args: list[bytes], session) -> bytes:
    attribute = args[2].upper()
    if attribute == b"LIB-NAME":
        if any(c <= 32 or c > 126 for c in args[3]):
            return resp.error("ERR lib-name cannot contain spaces, newlines or special characters.")
        session.lib_name = args[3]
    elif attribute == b"LIB-VER":
        session.lib_ver = args[3]
    else:
        return resp.error(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
    return resp.OK


def describe_client(session, now: float) -> str:
    def text(value: bytes | None) -> str:
        return value.decode(errors="replace") if value else ""

    return (f"id={session.client_id} addr={session.peer} laddr={session.local} "
            f"name={text(session.name)} age={int(now - session.created)} "
            f"idle={int(now - session.last_active)} flags=N db=0 "
            f"cmd={session.last_command} pending={len(session.pending)} resp={session.proto} "
            f"lib-name={text(session.lib_name)} lib-ver={text(session.lib_ver)}")


def client_info(args: list[bytes], session) -> bytes:
    return resp.verbatim(describe_client(session, time.monotonic()) + "\n", session.proto)


def client_list(args: list[bytes], session) -> bytes:
    now = time.monotonic()
    lines = [describe_client(s, now) for s in session.server.sessions()]
    return resp.verbatim("".join(line + "\n" for line in lines), session.proto)


def client_reply(args: list[bytes], session) -> bytes:
    if args[2].upper() == b"ON":
        return resp.OK
    return resp.error("ERR ringleader: CLIENT REPLY OFF/SKIP is not supported: replies are "
                      "matched to requests in order on shared node connections")


def reset(args: list[bytes], session) -> bytes:
    session.reset_state()
    return resp.simple("RESET")


def multi(args: list[bytes], session) -> bytes:
    return session.begin_transaction()


def exec_(args: list[bytes], session) -> bytes | None:
    return session.end_transaction(commit=True)


def discard(args: list[bytes], session) -> bytes | None:
    return session.end_transaction(commit=False)


def unwatch(args: list[bytes], session) -> bytes | None:
    return session.unwatch()


def subscribe_family(args: list[bytes], session) -> None:
    session.pubsub(args)


HANDLERS: dict[str, Handler] = {
    "subscribe": subscribe_family,
    "ssubscribe": subscribe_family,
    "psubscribe": subscribe_family,
    "unsubscribe": subscribe_family,
    "sunsubscribe": subscribe_family,
    "punsubscribe": subscribe_family,
    "multi": multi,
    "exec": exec_,
    "discard": discard,
    "unwatch": unwatch,
    "ping": ping,
    "echo": echo,
    "quit": quit_,
    "select": select,
    "hello": hello,
    "reset": reset,
    "client|setname": client_setname,
    "client|getname": client_getname,
    "client|id": client_id,
    "client|setinfo": client_setinfo,
    "client|info": client_info,
    "client|list": client_list,
    "client|reply": client_reply,
}


def reply_text(raw: bytes) -> str | None:
    """The text of a bulk or verbatim reply (a node's INFO), None for anything else."""
    if raw[:1] not in (b"$", b"="):
        return None
    body = raw[raw.find(b"\r\n") + 2:-2]
    if raw[:1] == b"=":
        body = body[4:]  # "txt:"
    return body.decode(errors="replace")


class Info(Route):
    """INFO: the proxy's own sections, with memory and keyspace figures summed over the
    nodes (so ``redis-cli --stat`` shows the whole keyspace) and a ``nodes`` section."""

    __slots__ = ("count",)

    def __init__(self, name: str, arity: int, count: int) -> None:
        super().__init__(name, arity)
        self.count = count

    def run(self, args: list[bytes], sink: Sink) -> None:
        server = getattr(sink, "server", None)
        if server is None:
            sink.reply(resp.error("ERR ringleader: INFO describes a proxy"))
            return
        sections = [a.decode(errors="replace").lower() for a in args[1:]]
        request = [b"INFO", b"memory", b"keyspace"]

        def merge(parts: list[bytes], proto: int) -> bytes:
            return resp.verbatim(server.info_text(sections, [reply_text(p) for p in parts]), proto)

        sink.fanout([(node, request) for node in range(self.count)], merge)

    def describe(self) -> str:
        return "proxy-local, with the nodes' memory and keyspace summed"
