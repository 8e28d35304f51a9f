"""Library mode: client-side sharding with the proxy's own placement and routes.

``ShardedClient`` is redis-py's command API (the ``CoreCommands`` mixin, so every method
takes the arguments redis-py takes and returns what redis-py returns with ``protocol=2``)
on top of ringleader's core: each command is routed by the same ``RouteTable`` the proxy
runs, so a key lands on exactly the node the proxy would pick, multi-key commands are split
and merged by the same merge functions, and cross-node commands get the same ``-CROSSSLOT``.

Everything here except the ``_Connection``/``_NodePool`` classes and ``ShardedClient``'s
``execute_command`` is free of I/O, and ``router.trio_client`` reuses it unchanged:

- ``ClientCore.prepare`` encodes the arguments as redis-py's ``Encoder`` does (plus the
  optional value codec) and runs the route table with a ``Call`` as its sink;
- a ``Call`` records what the route decided: one node and its request, parts for several
  nodes and their merge, or a reply made without any node;
- ``Batch`` groups the requests of one or many calls per node (a pipeline is one batch: one
  write and one read per node) and puts replies back together in call order;
- ``ClientCore.result`` parses the final raw reply with hiredis and applies redis-py's
  response callbacks, as redis-py's own RESP2 parser does.
"""

from __future__ import annotations

import functools
import select
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hiredis
from redis._parsers.base import BaseParser
from redis._parsers.encoders import Encoder
from redis.client import EMPTY_RESPONSE, NEVER_DECODE, CaseInsensitiveDict
from redis.commands.core import CoreCommands
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import resp
from .codecs import DECODED_REPLIES, ENCODED_VALUES, ValueCodec, resolve_codec
from .commands import CommandTable
from .config import ProxyConfig, from_node_list, load_toml, load_twemproxy
from .nodes import NodeSpec
from .route_table import RouteTable
from .routes import Merge

try:  # redis-py 8
    from redis._parsers.response_callbacks import get_response_callbacks
except ImportError:  # pragma: no cover - redis-py 5 to 7 keep the tables in helpers
    from redis._parsers import helpers as _helpers

    def get_response_callbacks(user_protocol: Any, legacy_responses: bool) -> dict:
        return {**_helpers._RedisCallbacks, **_helpers._RedisCallbacksRESP2}

__all__ = [
    "Batch",
    "Call",
    "ClientCore",
    "NodeConnectionError",
    "NodeTimeoutError",
    "Pipeline",
    "RoutingError",
    "ShardedClient",
]

RECV_SIZE = 64 * 1024


# ---------------------------------------------------------------- errors


class RoutingError(RedisError):
    """A command library mode cannot serve: it needs state that lives on one connection
    (a transaction, a subscription) or on the proxy (CLIENT LIST). Raised before anything
    is sent, so nothing ran; run it through the proxy, or against one node directly."""


class NodeConnectionError(RedisConnectionError):
    """One storage node could not be reached or failed mid-request; ``node`` is its
    ``host:port``. Commands for other nodes are unaffected."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node


class NodeTimeoutError(NodeConnectionError, RedisTimeoutError):
    """A node did not answer in time: both a ``redis.ConnectionError`` (the node is in
    trouble) and a ``redis.TimeoutError`` (what redis-py raises for the same case)."""


class _Unsupported(AttributeError):
    """Raised by a ``Call`` for sink attributes library mode lacks. An AttributeError, so
    routes that probe the sink with ``getattr(sink, name, None)`` see it as absent."""


_TRANSACTIONS = "transactions (MULTI/EXEC/WATCH) need one node connection per client"
_PROXY_ONLY = "it describes the proxy and its client connections"


def _why_unsupported(attribute: str) -> str:
    """Why library mode lacks a sink attribute a route asked for, for the error message."""
    if "transaction" in attribute or "watch" in attribute:
        return _TRANSACTIONS
    if "subscribe" in attribute or "pubsub" in attribute:
        return "pub/sub needs a connection that stays subscribed"
    if attribute in ("server", "client_id", "peer", "local"):
        return _PROXY_ONLY
    return f"it needs per-connection state that only the proxy keeps ({attribute})"


# ---------------------------------------------------------------- the sink


class ClientState:
    """What proxy-local commands remember per client (CLIENT SETNAME, CLIENT SETINFO)."""

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.lib_name: bytes | None = None
        self.lib_ver: bytes | None = None


class Call:
    """One command after routing: the sink the route table talks to, then a record of what
    it decided. Exactly one of ``node >= 0`` (forward ``payload``), ``parts`` (fan out, then
    ``merge``) or ``raw`` (answered without a node) holds afterwards."""

    __slots__ = ("command", "args", "node", "payload", "parts", "merge", "raw", "state",
                 "codec_reply", "blocking")

    proto = 2
    authenticated = True

    def __init__(self, command: Any, args: list[bytes], state: ClientState) -> None:
        self.command = command  # as the caller named it: redis-py's callbacks are keyed so
        self.args = args
        self.node = -1
        self.payload = b""
        self.parts: list[tuple[int, list[bytes]]] | None = None
        self.merge: Merge | None = None
        self.raw: bytes | None = None
        self.state = state
        self.codec_reply = False
        self.blocking = False  # waits on the node (BLPOP...): no read timeout applies

    # the sink API routes use
    def forward(self, node: int, args: list[bytes]) -> None:
        self.node = node
        self.payload = resp.pack_command(tuple(args))

    def fanout(self, calls: list[tuple[int, list[bytes]]], merge: Merge) -> None:
        self.parts = calls
        self.merge = merge

    def reply(self, raw: bytes) -> None:
        self.raw = raw

    def forward_dedicated(self, node: int, args: list[bytes]) -> None:
        """Blocking commands: every library request has a pooled connection to itself
        already, so this is a forward whose reply may take as long as the command says."""
        self.forward(node, args)
        self.blocking = True

    # harmless stand-ins for the proxy session's connection state
    def set_proto(self, proto: int) -> None:
        if proto != 2:
            raise RoutingError("RESP3 is not supported in library mode: the client speaks "
                               "RESP2 to the nodes and parses replies as redis-py does with "
                               "protocol=2")

    def authenticate(self, username: bytes, password: bytes) -> bytes | None:
        raise RoutingError("authentication is per node in library mode: pass username= and "
                           "password= to the client, or set them in the configuration")

    def close_after_reply(self) -> None:
        """QUIT: connections are pooled per node and stay open until ``close()``."""

    @property
    def name(self) -> bytes | None:
        return self.state.name

    @name.setter
    def name(self, value: bytes | None) -> None:
        self.state.name = value

    @property
    def lib_name(self) -> bytes | None:
        return self.state.lib_name

    @lib_name.setter
    def lib_name(self, value: bytes | None) -> None:
        self.state.lib_name = value

    @property
    def lib_ver(self) -> bytes | None:
        return self.state.lib_ver

    @lib_ver.setter
    def lib_ver(self, value: bytes | None) -> None:
        self.state.lib_ver = value

    def __getattr__(self, attribute: str) -> Any:
        raise _Unsupported(attribute)


def _shown(args: Sequence[bytes]) -> str:
    """A command's name as an error message shows it: ``CLIENT LIST``, ``BLPOP``."""
    words = [a.decode(errors="replace") for a in args[:2]]
    name = words[0].upper()
    if len(words) > 1 and name in ("CLIENT", "CONFIG", "OBJECT", "SCRIPT", "FUNCTION",
                                   "COMMAND", "MEMORY", "XINFO", "ACL", "CLUSTER"):
        return f"{name} {words[1].upper()}"
    return name


# ---------------------------------------------------------------- batches


class Batch:
    """The requests of some calls grouped per node, and their replies back in call order.

    ``payloads`` gives each node's requests as one write; ``fill``/``fail`` record each
    node's replies (or the error that stopped it); ``results`` puts every call's raw reply
    together (merging fan-outs) or the node error that prevents it.
    """

    __slots__ = ("calls", "where", "requests", "replies", "blocking")

    def __init__(self, calls: Sequence[Call]) -> None:
        self.calls = calls
        requests: dict[int, list[bytes]] = {}
        where: list[Any] = []
        for call in calls:
            node = call.node
            if node >= 0:
                queue = requests.get(node)
                if queue is None:
                    requests[node] = queue = []
                where.append((node, len(queue)))
                queue.append(call.payload)
            elif call.parts is not None:
                spots = []
                for part_node, args in call.parts:
                    queue = requests.get(part_node)
                    if queue is None:
                        requests[part_node] = queue = []
                    spots.append((part_node, len(queue)))
                    queue.append(resp.pack_command(tuple(args)))
                where.append(spots)
            else:
                where.append(None)
        self.where = where
        self.requests = requests
        self.blocking = any(call.blocking for call in calls)
        self.replies: dict[int, list[bytes] | Exception] = {}

    def payloads(self) -> Iterator[tuple[int, bytes, int]]:
        """(node, all its requests as one write, how many replies to read)."""
        for node, queue in self.requests.items():
            yield node, b"".join(queue), len(queue)

    def fill(self, node: int, replies: list[bytes]) -> None:
        self.replies[node] = replies

    def fail(self, node: int, error: Exception) -> None:
        self.replies[node] = error

    def results(self) -> list[bytes | Exception]:
        replies = self.replies
        out: list[bytes | Exception] = []
        for call, spot in zip(self.calls, self.where, strict=True):
            if spot is None:
                out.append(call.raw)  # type: ignore[arg-type]
            elif type(spot) is tuple:
                got = replies[spot[0]]
                out.append(got if isinstance(got, Exception) else got[spot[1]])
            else:
                parts: list[bytes] = []
                failed: Exception | None = None
                for node, index in spot:
                    got = replies[node]
                    if isinstance(got, Exception):
                        failed = got
                        break
                    parts.append(got[index])
                out.append(failed if failed is not None else _merged(call, parts))
        return out


def _merged(call: Call, parts: list[bytes]) -> bytes:
    try:
        return call.merge(parts, 2)  # type: ignore[misc]
    except Exception as exc:  # as the proxy does: a merge bug is an error reply, not a crash
        return resp.error(f"ERR ringleader: could not merge replies ({exc})")


# ---------------------------------------------------------------- framing replies


class ReplyFramer:
    """Cuts a node's byte stream into raw replies (``resp.reply_end``), without copying
    the buffer per reply; shared by the blocking and the trio connections."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos:
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        elif self.buf:
            self.buf += data
        else:
            self.buf = data

    def next_reply(self) -> bytes | None:
        buf, pos = self.buf, self.pos
        n = len(buf)
        if pos >= n:
            return None
        end = resp.reply_end(buf, pos, n)
        if end < 0:
            return None
        if end == n:
            self.buf, self.pos = b"", 0
        else:
            self.pos = end
        return buf[pos:end]

    def recv_size(self) -> int:
        """Large replies arrive in growing reads, so framing them stays linear."""
        return max(RECV_SIZE, len(self.buf) - self.pos)

    def pending(self) -> bool:
        return self.pos < len(self.buf)


def looks_closed(fd: int) -> bool:
    """True when an idle pooled connection has anything to read: the node closed it (or
    sent something unasked); either way it must not carry a request."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# ---------------------------------------------------------------- the shared core


@functools.lru_cache(maxsize=1)
def default_command_table() -> CommandTable:
    return CommandTable.default()


def config_from_nodes(nodes: Sequence[str] | str) -> ProxyConfig:
    """A configuration from ``["host:port", ...]`` (or the proxy's comma-separated form)."""
    text = nodes if isinstance(nodes, str) else ",".join(nodes)
    return from_node_list(text)


class ClientCore:
    """Everything a library client does except I/O: encoding, routing, decoding."""

    def __init__(self, config: ProxyConfig, *, decode_responses: bool = False,
                 encoding: str = "utf-8", encoding_errors: str = "strict",
                 value_codec: str | ValueCodec | None = None,
                 table: CommandTable | None = None) -> None:
        self.config = config
        self.nodes: tuple[NodeSpec, ...] = config.nodes
        self.addresses = [n.address for n in config.nodes]
        self.placement = config.placement()
        self.routes = RouteTable(table or default_command_table(), self.placement, self.addresses,
                                 config.route_options())
        self.encoder = Encoder(encoding, encoding_errors, decode_responses)
        self.callbacks = CaseInsensitiveDict(get_response_callbacks(2, True))
        self.codec = resolve_codec(value_codec)
        self.state = ClientState()
        self._local = threading.local()  # one hiredis reader per thread

    # ------------------------------------------------------------------ requests

    def encode_args(self, args: Sequence[Any]) -> list[bytes]:
        """redis-py's encoding: a first argument with spaces (``"CONFIG GET"``) is several
        words; str by the client's encoding; int and float by ``repr``; bool refused."""
        first = args[0]
        if isinstance(first, str):
            out = first.encode().split() if " " in first else [first.encode()]
        elif isinstance(first, bytes | bytearray | memoryview):
            first = bytes(first)
            out = first.split() if b" " in first else [first]
        else:
            raise RedisError(f"a command name must be str or bytes, not {type(first).__name__}")
        encode = self.encoder.encode
        for arg in args[1:]:
            if type(arg) is bytes:
                out.append(arg)
            else:
                value = encode(arg)
                out.append(value if type(value) is bytes else bytes(value))
        return out

    def _apply_codec(self, args: Sequence[Any]) -> tuple[list[Any], bool]:
        """Values of the codec's commands encoded; and whether the reply is a value."""
        codec = self.codec
        first = args[0]
        name = first.decode(errors="replace") if isinstance(first, bytes) else str(first)
        name = name.split(" ", 1)[0].lower()
        out = list(args)
        spot = ENCODED_VALUES.get(name)
        if spot is not None:
            start, step = spot
            if step is None:
                if len(out) > start:
                    out[start] = codec.encode(out[start])  # type: ignore[union-attr]
            else:
                for i in range(start, len(out), step):
                    out[i] = codec.encode(out[i])  # type: ignore[union-attr]
        decodes = name in DECODED_REPLIES
        if name == "set":  # SET ... GET replies with the old value
            decodes = any(isinstance(a, str | bytes) and a.upper() in ("GET", b"GET")
                          for a in args[3:])
        return out, decodes

    def prepare(self, args: Sequence[Any]) -> Call:
        """Encode and route one command; raises RoutingError for what library mode lacks."""
        codec_reply = False
        if self.codec is not None:
            args, codec_reply = self._apply_codec(args)
        words = self.encode_args(args)
        call = Call(args[0], words, self.state)
        call.codec_reply = codec_reply
        try:
            self.routes.dispatch(words, call)
        except _Unsupported as exc:
            raise RoutingError(f"'{_shown(words)}' is not supported in library mode: "
                               f"{_why_unsupported(exc.args[0])}; run it through the proxy "
                               "or against one node") from None
        return call

    def node_for(self, key: Any) -> str:
        """The ``host:port`` that holds ``key``, exactly as the proxy would place it."""
        data = key if type(key) is bytes else bytes(self.encoder.encode(key))
        return self.addresses[self.placement.node_index(data)]

    def login_requests(self, node: NodeSpec, username: str | None,
                       password: str | None) -> list[bytes]:
        """What a new connection to ``node`` sends first (AUTH, SELECT), packed."""
        out = []
        user = node.username or username or self.config.node_username
        secret = node.password or password or self.config.node_password
        if secret:
            out.append(resp.pack_command(("AUTH", user, secret) if user else ("AUTH", secret)))
        if self.config.node_db:
            out.append(resp.pack_command(("SELECT", str(self.config.node_db))))
        return out

    # ------------------------------------------------------------------ replies

    def _reader(self) -> hiredis.Reader:
        try:
            return self._local.reader
        except AttributeError:
            encoder = self.encoder
            kwargs: dict[str, Any] = {"protocolError": InvalidResponse,
                                      "replyError": BaseParser.parse_error,
                                      "errors": encoder.encoding_errors}
            if encoder.decode_responses:
                kwargs["encoding"] = encoder.encoding
            reader = self._local.reader = hiredis.Reader(**kwargs)
            return reader

    def result(self, call: Call, raw: bytes | Exception, options: dict[str, Any]) -> Any:
        """The Python value of a raw reply, as redis-py's ``parse_response`` makes it
        (callbacks with the command's options); an error reply is raised."""
        if isinstance(raw, Exception):
            raise raw
        reader = self._reader()
        reader.feed(raw)
        try:
            if call.codec_reply or (options and NEVER_DECODE in options):
                value = reader.gets(False)
            else:
                value = reader.gets()
        except BaseException:
            del self._local.reader  # it may hold half a reply
            raise
        if value is False:  # not one complete reply (RESP2 has no false)
            del self._local.reader
            raise InvalidResponse(f"incomplete reply {raw[:40]!r}")
        if options:
            options.pop(NEVER_DECODE, None)
            if isinstance(value, ResponseError):
                if EMPTY_RESPONSE in options:
                    return options[EMPTY_RESPONSE]
                raise value
            options.pop(EMPTY_RESPONSE, None)
            options.pop("keys", None)
        elif isinstance(value, ResponseError):
            raise value
        if call.codec_reply:
            return self._decode_values(value)
        callback = self.callbacks.get(call.command) if isinstance(call.command, str) else None
        if callback is not None:
            return callback(value, **options) if options else callback(value)
        return value

    def _decode_values(self, value: Any) -> Any:
        decode = self.codec.decode  # type: ignore[union-attr]
        if value is None:
            return None
        if type(value) is list:
            return [None if v is None else decode(v) for v in value]
        return decode(value)

    def results(self, calls: Sequence[tuple[Call, dict[str, Any]]],
                raws: Sequence[bytes | Exception], raise_on_error: bool) -> list[Any]:
        """A pipeline's values in call order; errors in place, or the first one raised."""
        out: list[Any] = []
        for number, ((call, options), raw) in enumerate(zip(calls, raws, strict=True), 1):
            try:
                out.append(self.result(call, raw, options))
            except (ResponseError, RedisConnectionError) as exc:
                if raise_on_error:
                    if isinstance(exc, ResponseError):
                        _annotate(exc, number, call.args)
                    raise
                out.append(exc)
        return out


def _annotate(exc: Exception, number: int, args: list[bytes]) -> None:
    """As redis-py's pipeline does: say which command of the pipeline failed."""
    shown = " ".join(a.decode(errors="replace") for a in args)
    if len(shown) > 100:
        shown = shown[:97] + "..."
    exc.args = (f"Command # {number} ({shown}) of pipeline caused error: {exc.args[0]}",
                *exc.args[1:])


# ---------------------------------------------------------------- the shared client surface

C = TypeVar("C", bound="LibraryClientBase")


class LibraryClientBase:
    """Construction and the non-I/O API both library clients share."""

    _core: ClientCore

    def __init__(self, nodes: Sequence[str] | str | None = None, *,
                 config: ProxyConfig | None = None, decode_responses: bool = False,
                 encoding: str = "utf-8", encoding_errors: str = "strict",
                 socket_timeout: float | None = None,
                 socket_connect_timeout: float | None = None,
                 value_codec: str | ValueCodec | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        if (nodes is None) == (config is None):
            raise ValueError("give the nodes (['host:port', ...]) or a config, not both")
        if config is None:
            config = config_from_nodes(nodes)  # type: ignore[arg-type]
        self._core = ClientCore(config, decode_responses=decode_responses, encoding=encoding,
                                encoding_errors=encoding_errors, value_codec=value_codec)
        self.socket_timeout = (socket_timeout if socket_timeout is not None
                               else config.timeouts.request_ms / 1000)
        self.socket_connect_timeout = (socket_connect_timeout if socket_connect_timeout is not None
                                       else config.timeouts.connect_ms / 1000)
        self._username = username
        self._password = password
        self._kwargs = {"decode_responses": decode_responses, "encoding": encoding,
                        "encoding_errors": encoding_errors, "protocol": 2,
                        "socket_timeout": self.socket_timeout}

    @classmethod
    def from_config(cls: type[C], path: str | Path, **kwargs: Any) -> C:
        """The same TOML file the proxy reads (``ringleader serve --config``)."""
        return cls(config=load_toml(path), **kwargs)

    @classmethod
    def from_twemproxy(cls: type[C], path: str | Path, pool: str | None = None,
                       **kwargs: Any) -> C:
        """A nutcracker YAML pool: keys are found where nutcracker put them."""
        return cls(config=load_twemproxy(path, pool), **kwargs)

    @property
    def config(self) -> ProxyConfig:
        return self._core.config

    @property
    def nodes(self) -> list[str]:
        """The nodes' ``host:port``, in configuration order."""
        return list(self._core.addresses)

    def node_for(self, key: Any) -> str:
        """The ``host:port`` of the node that holds ``key`` (the proxy would pick the same)."""
        return self._core.node_for(key)

    def get_encoder(self) -> Encoder:
        """redis-py's hook for commands that encode arguments themselves (scripts, ACL)."""
        return self._core.encoder

    def get_connection_kwargs(self) -> dict[str, Any]:
        """redis-py's hook for commands that ask how replies are decoded (SLOWLOG GET)."""
        return dict(self._kwargs)

    def set_response_callback(self, command: str, callback: Callable[..., Any]) -> None:
        """As in redis-py: how ``command``'s replies are turned into Python values."""
        self._core.callbacks[command] = callback

    def _refuse(self, what: str, why: str) -> RoutingError:
        return RoutingError(f"{what} is not supported in library mode: {why}; use a redis-py "
                            "client against the proxy or a node for it")

    def pubsub(self, **kwargs: Any) -> Any:
        raise self._refuse("pub/sub", "it needs a connection that stays subscribed")

    def monitor(self) -> Any:
        raise self._refuse("MONITOR", "it watches one node's server")

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("transactions (MULTI/EXEC/WATCH)",
                           "they need one node connection per client")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core.addresses!r})"


class PipelineBase:
    """Queues calls (already routed, so routing errors surface at the call), then runs them
    as one batch: one write and one read per node, results in call order."""

    def __init__(self, client: LibraryClientBase) -> None:
        self._client = client
        self._core = client._core
        self.command_stack: list[tuple[Call, dict[str, Any]]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.command_stack.append((self._core.prepare(args), options))
        return self

    def __len__(self) -> int:
        return len(self.command_stack)

    def __bool__(self) -> bool:
        return True

    def reset(self) -> None:
        self.command_stack = []

    def get_encoder(self) -> Encoder:
        return self._core.encoder

    def get_connection_kwargs(self) -> dict[str, Any]:
        return self._client.get_connection_kwargs()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def _take(self) -> tuple[list[tuple[Call, dict[str, Any]]], Batch]:
        stack, self.command_stack = self.command_stack, []
        return stack, Batch([call for call, _ in stack])


def refuse_transaction(transaction: bool) -> None:
    if transaction:
        raise RoutingError("transactional pipelines (MULTI/EXEC) are not supported in library "
                           "mode; use pipeline(transaction=False), or one hash tag and the "
                           "proxy once it serves transactions")


# ---------------------------------------------------------------- blocking I/O


class _Connection:
    """One blocking socket to one node; replies framed as they arrive."""

    __slots__ = ("sock", "framer", "address")

    def __init__(self, node: NodeSpec, connect_timeout: float, timeout: float,
                 login: list[bytes]) -> None:
        self.address = node.address
        self.framer = ReplyFramer()
        try:
            self.sock = socket.create_connection((node.host, node.port), timeout=connect_timeout)
        except TimeoutError:
            raise NodeTimeoutError(self.address,
                                   f"no connection within {connect_timeout:g}s") from None
        except OSError as exc:
            raise NodeConnectionError(self.address,
                                      f"cannot connect: {exc.strerror or exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        if login:
            try:
                self.send(b"".join(login))
                replies = self.read(len(login))
            except BaseException:
                self.close()
                raise
            for reply in replies:
                if reply[:1] == b"-":
                    self.close()
                    raise NodeConnectionError(self.address, "login refused: "
                                              + reply[1:-2].decode(errors="replace"))

    def send(self, payload: bytes) -> None:
        try:
            self.sock.sendall(payload)
        except TimeoutError:
            raise NodeTimeoutError(self.address, "send timed out; the command may or may not "
                                   "have run") from None
        except OSError as exc:
            raise NodeConnectionError(self.address, f"connection failed ({exc.strerror or exc}); "
                                      "the command may or may not have run") from None

    def read(self, count: int) -> list[bytes]:
        framer = self.framer
        replies: list[bytes] = []
        recv = self.sock.recv
        try:
            while True:
                reply = framer.next_reply()
                while reply is not None:
                    replies.append(reply)
                    if len(replies) == count:
                        return replies
                    reply = framer.next_reply()
                data = recv(framer.recv_size())
                if not data:
                    raise NodeConnectionError(self.address, "the node closed the connection; "
                                              "the command may or may not have run")
                framer.feed(data)
        except TimeoutError:
            raise NodeTimeoutError(self.address, f"no reply within {self.sock.gettimeout():g}s; "
                                   "the command may or may not have run") from None
        except resp.ProtocolError as exc:
            raise NodeConnectionError(self.address, f"malformed reply: {exc}") from None
        except NodeConnectionError:
            raise
        except OSError as exc:
            raise NodeConnectionError(self.address, f"connection failed ({exc.strerror or exc}); "
                                      "the command may or may not have run") from None

    def usable(self) -> bool:
        return not self.framer.pending() and not looks_closed(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()


class _NodePool:
    """Idle connections to one node. A thread borrows one per request (or per pipeline), so
    threads never share a socket; ``deque`` pop/append are atomic, no lock is needed."""

    def __init__(self, node: NodeSpec, client: ShardedClient) -> None:
        self.node = node
        self.client = client
        self.idle: deque[_Connection] = deque()
        self.login = client._core.login_requests(node, client._username, client._password)

    def get(self) -> _Connection:
        idle = self.idle
        while idle:
            try:
                conn = idle.pop()
            except IndexError:
                break
            if conn.usable():
                return conn
            conn.close()
        client = self.client
        return _Connection(self.node, client.socket_connect_timeout, client.socket_timeout,
                           self.login)

    def put(self, conn: _Connection) -> None:
        self.idle.append(conn)

    def request(self, payload: bytes, blocking: bool = False) -> bytes:
        conn = self.get()
        try:
            if blocking:
                conn.sock.settimeout(None)
            conn.send(payload)
            reply = conn.read(1)[0]
            if blocking:
                conn.sock.settimeout(self.client.socket_timeout)
        except BaseException:
            conn.close()
            raise
        self.idle.append(conn)
        return reply

    def close(self) -> None:
        while self.idle:
            try:
                self.idle.pop().close()
            except IndexError:
                break


class ShardedClient(LibraryClientBase, CoreCommands):
    """A blocking redis-py-compatible client that shards keys over the nodes itself.

    Thread-safe: each request borrows a connection of its node's pool. Construct it with
    the nodes (``["127.0.0.1:7001", ...]``), ``from_config`` (the proxy's TOML) or
    ``from_twemproxy`` (a nutcracker YAML); every redis-py command method is available, and
    commands ringleader cannot serve raise ``RoutingError`` or the proxy's error reply.
    """

    def __init__(self, nodes: Sequence[str] | str | None = None, **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)
        self._pools = [_NodePool(node, self) for node in self._core.nodes]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Route, send and decode one command, as ``redis.Redis.execute_command`` does."""
        core = self._core
        call = core.prepare(args)
        if call.node >= 0:
            raw: bytes | Exception = self._pools[call.node].request(call.payload, call.blocking)
        elif call.raw is not None:
            raw = call.raw
        else:
            raw = self._run(Batch([call]))[0]
        return core.result(call, raw, options)

    def _run(self, batch: Batch) -> list[bytes | Exception]:
        """Send every node its requests in one write, then read each node's replies; a node
        that fails fails only its own calls."""
        pools = self._pools
        sent: list[tuple[int, _Connection, int]] = []
        try:
            for node, payload, count in batch.payloads():
                try:
                    conn = pools[node].get()
                except NodeConnectionError as exc:
                    batch.fail(node, exc)
                    continue
                try:
                    conn.send(payload)
                except NodeConnectionError as exc:
                    conn.close()
                    batch.fail(node, exc)
                    continue
                sent.append((node, conn, count))
            while sent:
                node, conn, count = sent[0]
                try:
                    if batch.blocking:
                        conn.sock.settimeout(None)
                    batch.fill(node, conn.read(count))
                    if batch.blocking:
                        conn.sock.settimeout(self.socket_timeout)
                except NodeConnectionError as exc:
                    conn.close()
                    batch.fail(node, exc)
                else:
                    pools[node].put(conn)
                sent.pop(0)
        except BaseException:
            for _, conn, _ in sent:  # interrupted mid-exchange: these are out of step
                conn.close()
            raise
        return batch.results()

    def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> Pipeline:
        """Commands queued, then sent per node in one round trip by ``execute()``.

        Unlike redis-py, ``transaction`` defaults to False: a sharded pipeline is not atomic
        across nodes, and transactional ones are refused.
        """
        refuse_transaction(transaction)
        return Pipeline(self)

    def close(self) -> None:
        """Close the idle connections (the client reconnects if used again)."""
        for pool in self._pools:
            pool.close()

    def __enter__(self) -> ShardedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter shutdown, say
            pass


class Pipeline(PipelineBase, CoreCommands):
    """``ShardedClient.pipeline()``: every redis-py command method queues and returns the
    pipeline; ``execute()`` returns the results in call order."""

    _client: ShardedClient

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run the queued commands: one round trip per node involved. With
        ``raise_on_error=False`` errors (including a failed node's) are returned in place."""
        stack, batch = self._take()
        if not stack:
            return []
        raws = self._client._run(batch)
        return self._core.results(stack, raws, raise_on_error)
