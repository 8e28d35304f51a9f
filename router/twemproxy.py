"""Read a nutcracker (twemproxy) YAML config, so its users can switch with no data movement.

The file is checked as nutcracker 0.5.0 checks it, so a config nutcracker refuses is refused
here too and the error names the same problem: unknown or repeated directives, numbers that are
not plain non-negative decimals, booleans other than ``true``/``false``, a hash tag that is not
two bytes, a pool with no ``listen`` or no servers, servers sharing a name, two pools on one
``listen``. Scalars are read as the raw text nutcracker sees (``yes`` is not a boolean there).

Some pools nutcracker serves ringleader cannot: memcached pools (``redis: false``, which is
twemproxy's default), unix-socket ``listen`` or servers, and ``distribution: random``.
``load_pools`` refuses a file holding any of them; ``load_pool`` refuses only if the pool asked
for is one, so one Redis pool can be taken from a mixed file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .continuum import build_distribution, server_order, twemproxy_name
from .hashkit import TWEMPROXY_HASHES, get_hash
from .nodes import NodeSpec
from .placement import Placement

__all__ = ["ConfigError", "TwemproxyPool", "load_pool", "load_pools", "parse_pools"]

DEFAULT_HASH = "fnv1a_64"
DEFAULT_DISTRIBUTION = "ketama"
DEFAULT_SERVER_RETRY_TIMEOUT_MS = 30_000
DEFAULT_SERVER_FAILURE_LIMIT = 2

_NUMBERS = ("timeout", "backlog", "client_connections", "redis_db", "server_connections",
            "server_retry_timeout", "server_failure_limit")
_BOOLEANS = ("redis", "tcpkeepalive", "reuseport", "preconnect", "auto_eject_hosts")
_STRINGS = ("listen", "hash", "hash_tag", "distribution", "redis_auth")
#: Every directive nutcracker knows (``reuseport`` is newer than 0.5.0, accepted all the same).
DIRECTIVES = frozenset(_NUMBERS + _BOOLEANS + _STRINGS + ("servers",))
_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class TwemproxyPool:
    """One nutcracker pool; defaults are nutcracker's for directives the file leaves out.

    ``nodes`` carry ``redis_auth`` as their password, since nutcracker logs in to every server
    with it (it also makes clients AUTH with it). ``redis`` is always true: memcached pools are
    refused. ``redis_db`` is the database nutcracker SELECTs on its server connections.
    """

    name: str
    listen: str
    nodes: list[NodeSpec]
    hash: str = DEFAULT_HASH
    distribution: str = DEFAULT_DISTRIBUTION
    hash_tag: bytes | None = None
    timeout_ms: int | None = None
    redis_auth: str | None = None
    redis_db: int = 0
    server_retry_timeout_ms: int = DEFAULT_SERVER_RETRY_TIMEOUT_MS
    server_failure_limit: int = DEFAULT_SERVER_FAILURE_LIMIT
    auto_eject_hosts: bool = False
    redis: bool = True
    server_connections: int = 1
    preconnect: bool = False
    backlog: int = 512
    tcpkeepalive: bool = False

    def placement(self) -> Placement:
        """Key to index into ``nodes``, exactly as nutcracker places keys in this pool."""
        return Placement(get_hash(self.hash), build_distribution(self.distribution, self.nodes),
                         hash_tag=self.hash_tag)


class ConfigError(ValueError):
    """A twemproxy config nutcracker would refuse, or ringleader cannot serve."""


@dataclass
class _Server:
    text: str
    host: str  # the socket path for a unix-socket server
    port: int  # 0 for a unix-socket server
    weight: int
    name: str | None


@dataclass
class _RawPool:
    """A pool as nutcracker accepts it, before ringleader's own restrictions."""

    name: str
    settings: dict[str, str]
    servers: list[_Server] = field(default_factory=list)


class _Loader(yaml.BaseLoader):
    """Every scalar stays a string, as libyaml hands it to nutcracker; repeated keys fail
    (nutcracker reports them as duplicates, PyYAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key!r} is a duplicate{key_node.start_mark}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _number(pool: str, key: str, text: str) -> int:
    # nutcracker's parser: decimal digits only, no sign, no spaces, fits a C int.
    if not text.isascii() or not text.isdigit() or int(text) > _INT_MAX:
        raise ConfigError(f"pool {pool!r}: {key}: {text!r} is not a number")
    return int(text)


def _boolean(pool: str, key: str, text: str) -> bool:
    if text not in ("true", "false"):
        raise ConfigError(f"pool {pool!r}: {key}: {text!r} is not \"true\" or \"false\"")
    return text == "true"


def _parse_server(pool: str, text: str) -> _Server:
    """``host:port:weight [name]`` or ``/path:weight [name]``, split from the end as nutcracker
    does: the name is after the last space, so a name cannot hold a space, and the weight is
    required."""
    form = "\"host:port:weight [name]\" or \"/path/unix_socket:weight [name]\""
    rest, space, name = text.rpartition(" ")
    if not space:
        rest, name = text, ""
    elif not name:
        raise ConfigError(f"pool {pool!r}: server {text!r} has an empty name")
    address, colon, weight_text = rest.rpartition(":")
    if not colon:
        raise ConfigError(f"pool {pool!r}: server {text!r} is not in {form} form")
    if address.startswith("/"):
        host, port = address, 0
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon or not host:
            raise ConfigError(f"pool {pool!r}: server {text!r} is not in {form} form")
        port = _number(pool, f"server {text!r} port", port_text)
        if not 0 < port < 65536:
            raise ConfigError(f"pool {pool!r}: server {text!r} has an invalid port")
        if not name:
            # The name ketama hashes is the address as written; keep it when it is not
            # what host:port prints back (a port written with leading zeros).
            literal = host if port == 11211 else f"{host}:{port_text}"
            if literal.encode() != twemproxy_name(NodeSpec(host, port)):
                name = literal
    weight = _number(pool, f"server {text!r} weight", weight_text)
    if weight == 0:
        raise ConfigError(f"pool {pool!r}: server {text!r} has a zero weight")
    return _Server(text, host, port, weight, name or None)


def _read_pool(name: str, body: Any) -> _RawPool:
    if not isinstance(body, dict):
        raise ConfigError(f"pool {name!r} must be a mapping of directives")
    raw = _RawPool(name, {})
    for key, value in body.items():
        if key not in DIRECTIVES:
            known = ", ".join(sorted(DIRECTIVES))
            raise ConfigError(f"pool {name!r}: directive {key!r} is unknown (nutcracker "
                              f"refuses it too); known directives: {known}")
        if key == "servers":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"pool {name!r}: servers must be a list of "
                                  "\"host:port:weight [name]\" strings")
            raw.servers = [_parse_server(name, text) for text in value]
            continue
        if not isinstance(value, str):
            raise ConfigError(f"pool {name!r}: {key} must be a single value")
        if key in _NUMBERS:
            _number(name, key, value)
        elif key in _BOOLEANS:
            _boolean(name, key, value)
        elif key == "hash" and value not in TWEMPROXY_HASHES:
            raise ConfigError(f"pool {name!r}: hash {value!r} is not a valid hash; twemproxy's "
                              f"hashes are {', '.join(TWEMPROXY_HASHES)}")
        elif key == "distribution" and value not in ("ketama", "modula", "random"):
            raise ConfigError(f"pool {name!r}: distribution {value!r} is not a valid "
                              "distribution; twemproxy's are ketama, modula, random")
        elif key == "hash_tag" and len(value.encode()) != 2:
            raise ConfigError(f"pool {name!r}: hash_tag {value!r} is not a valid hash tag "
                              "string with two characters")
        elif key == "listen":
            _check_listen(name, value)
        raw.settings[key] = value
    if "listen" not in raw.settings:
        raise ConfigError(f"pool {name!r}: directive \"listen:\" is missing")
    if not raw.servers:
        raise ConfigError(f"pool {name!r} has no servers")
    if raw.settings.get("server_connections") == "0":
        raise ConfigError(f"pool {name!r}: directive \"server_connections:\" cannot be 0")
    if raw.settings.get("redis") != "true" and raw.settings.get("redis_auth"):
        raise ConfigError(f"pool {name!r}: redis_auth is only valid for a redis pool")
    names = [s.name or (s.host if s.port in (0, 11211) else f"{s.host}:{s.port}")
             for s in raw.servers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"pool {name!r} has servers with the same name {repeated[0]!r}")
    return raw


def _check_listen(pool: str, value: str) -> None:
    if value.startswith("/"):
        return  # a unix socket: nutcracker accepts it, _to_pool refuses it
    host, colon, port_text = value.rpartition(":")
    if not colon:
        raise ConfigError(f"pool {pool!r}: listen {value!r} has an invalid "
                          "\"hostname:port\" format string")
    port = _number(pool, "listen port", port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"pool {pool!r}: listen {value!r} has an invalid port")


def _read(text: str, source: str) -> dict[str, _RawPool]:
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not isinstance(document, dict) or not document:
        raise ConfigError(f"{source}: has no pools (expected a mapping of pool name to "
                          "directives)")
    try:
        pools = {name: _read_pool(name, body) for name, body in document.items()}
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    listens: dict[str, str] = {}
    for pool in pools.values():
        other = listens.setdefault(pool.settings["listen"], pool.name)
        if other != pool.name:
            raise ConfigError(f"{source}: pools {other!r} and {pool.name!r} have the same "
                              f"listen {pool.settings['listen']!r}")
    return pools


def _to_pool(raw: _RawPool, source: str) -> TwemproxyPool:
    """The pool as ringleader serves it, or a clear refusal of what it cannot serve."""
    s = raw.settings
    where = f"{source}: pool {raw.name!r}"
    if s.get("redis") != "true":
        raise ConfigError(f"{where} is a memcached pool (twemproxy's default is redis: false); "
                          "ringleader serves Redis only: if its servers are Redis, say redis: true")
    if s["listen"].startswith("/"):
        raise ConfigError(f"{where}: listening on a unix socket ({s['listen']}) is not "
                          "supported; use host:port")
    for server in raw.servers:
        if server.port == 0:
            raise ConfigError(f"{where}: unix-socket server {server.text!r} is not supported; "
                              "ringleader reaches nodes over TCP (host:port:weight)")
    if s.get("distribution") == "random":
        try:
            build_distribution("random", [])
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    nodes = [NodeSpec(sv.host, sv.port, sv.weight, sv.name,
                      password=s.get("redis_auth") or None) for sv in raw.servers]
    server_order(nodes)  # the same duplicate-name and weight checks the builders make
    number = {key: int(s[key]) for key in _NUMBERS if key in s}
    flag = {key: s[key] == "true" for key in _BOOLEANS if key in s}
    return TwemproxyPool(
        name=raw.name,
        listen=s["listen"],
        nodes=nodes,
        hash=s.get("hash", DEFAULT_HASH),
        distribution=s.get("distribution", DEFAULT_DISTRIBUTION),
        hash_tag=s["hash_tag"].encode() if "hash_tag" in s else None,
        timeout_ms=number.get("timeout"),
        redis_auth=s.get("redis_auth") or None,
        redis_db=number.get("redis_db", 0),
        server_retry_timeout_ms=number.get("server_retry_timeout",
                                           DEFAULT_SERVER_RETRY_TIMEOUT_MS),
        server_failure_limit=number.get("server_failure_limit", DEFAULT_SERVER_FAILURE_LIMIT),
        auto_eject_hosts=flag.get("auto_eject_hosts", False),
        redis=True,
        server_connections=number.get("server_connections", 1),
        preconnect=flag.get("preconnect", False),
        backlog=number.get("backlog", 512),
        tcpkeepalive=flag.get("tcpkeepalive", False),
    )


def parse_pools(text: str, source: str = "<config>") -> dict[str, TwemproxyPool]:
    """Every pool in config ``text``; each must be one ringleader can serve."""
    return {name: _to_pool(raw, source) for name, raw in _read(text, source).items()}


def load_pools(path: str | os.PathLike[str]) -> dict[str, TwemproxyPool]:
    """Every pool in the nutcracker config at ``path``; each must be one ringleader can serve
    (use ``load_pool`` to take one Redis pool out of a file that also has memcached pools)."""
    with open(path, encoding="utf-8") as f:
        return parse_pools(f.read(), str(path))


def load_pool(path: str | os.PathLike[str], name: str | None = None) -> TwemproxyPool:
    """The pool called ``name`` (``None``: the file's only pool). The whole file must be one
    nutcracker accepts, but only the chosen pool must be one ringleader can serve."""
    with open(path, encoding="utf-8") as f:
        raw = _read(f.read(), str(path))
    if name is None:
        if len(raw) != 1:
            raise ConfigError(f"{path} has {len(raw)} pools ({_describe(raw)}): "
                              "choose one by name (--pool NAME)")
        name = next(iter(raw))
    if name not in raw:
        raise ConfigError(f"{path} has no pool {name!r}; its pools: {_describe(raw)}")
    return _to_pool(raw[name], str(path))


def _describe(pools: dict[str, _RawPool]) -> str:
    return ", ".join(
        f"{name} (listen {raw.settings['listen']}"
        f"{'' if raw.settings.get('redis') == 'true' else ', memcached'})"
        for name, raw in pools.items()
    )
