"""The ``ringleader`` command: ``up``, ``serve``, ``locate``, ``commands``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from . import __version__
from .config import (
    DEFAULT_LISTEN,
    ConfigError,
    ProxyConfig,
    from_mapping,
    from_node_list,
    load_toml,
    load_twemproxy,
    split_address,
)

log = logging.getLogger("ringleader")


def _config_from_args(args: argparse.Namespace, *, need_listen: bool = True) -> ProxyConfig:
    sources = [bool(args.nodes), bool(args.config), bool(args.twemproxy)]
    if sum(sources) != 1:
        raise ConfigError("give exactly one of --nodes, --config or --twemproxy")
    if args.nodes:
        config = from_node_list(args.nodes)
    elif args.config:
        config = load_toml(args.config)
    else:
        config = load_twemproxy(args.twemproxy, args.pool)
    overrides = {}
    if need_listen and getattr(args, "listen", None):
        split_address(args.listen)
        overrides["listen"] = args.listen
    if getattr(args, "requirepass", None):
        overrides["requirepass"] = args.requirepass
    if getattr(args, "workers", None):
        overrides["workers"] = args.workers
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    if getattr(args, "admin_password", None):
        overrides["admin_password"] = args.admin_password
    if getattr(args, "hotkeys", False) and not config.hotkeys.enabled:
        from hotkeys.rules import HotKeySettings

        overrides["hotkeys"] = HotKeySettings(enabled=True)
    return config.with_overrides(**overrides)


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", help="comma-separated storage nodes: host:port[:weight] ...")
    p.add_argument("--config", help="a ringleader TOML file (see docs/configuration.md)")
    p.add_argument("--twemproxy", metavar="YAML", help="a twemproxy (nutcracker) config file")
    p.add_argument("--pool", help="which pool of the twemproxy file (default: the only one)")


async def run_proxy(config: ProxyConfig, *, announce=None) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish in-flight requests, return."""
    from .server import ProxyServer

    server = ProxyServer(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
                await server.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # shut down: stop watching for signals

            await nursery.start(serve)
            if announce is not None:
                announce(server)
            stopping = False
            async for signum in signals:
                if stopping:  # a second signal: stop now
                    log.warning("second %s: exiting at once", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
                stopping = True
                log.info("received %s: finishing in-flight requests, then exiting",
                         signal.Signals(signum).name)
                server.shutdown()


def check_fsync_support(config: ProxyConfig) -> None:
    """write_ack = fsync needs WAITAOF (Redis >= 7.2) on every primary: refuse to start
    otherwise, rather than acknowledge writes that were never fsynced."""
    if not config.policy_set().uses_fsync:
        return
    from backends.local_nodes import redis_version

    for node in config.nodes:
        version = redis_version(node.host, node.port, password=node.password or config.node_password)
        if version is None:
            raise ConfigError(f"write_ack = fsync: cannot reach {node.address} to check that it "
                              "supports WAITAOF")
        if version < (7, 2):
            raise ConfigError(
                f"write_ack = fsync needs WAITAOF (Redis 7.2 or newer), but {node.address} runs "
                f"Redis {'.'.join(map(str, version))}; use replicas:N or upgrade the nodes")


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    check_fsync_support(config)
    if config.workers > 1:
        from .workers import run_workers

        return run_workers(config)

    def announce(server) -> None:
        host, port = server.address
        log.info("ringleader %s listening on %s:%d, %d nodes: %s", __version__, host, port,
                 len(config.nodes), ", ".join(n.address for n in config.nodes))

    trio.run(functools.partial(run_proxy, config, announce=announce))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from backends.local_nodes import (
        RedisOptions,
        ServerNotFound,
        find_redis_server,
        port_accepts,
        start_redis,
    )

    host, port = split_address(args.listen)
    if port_accepts(host, port):
        print(f"ringleader up: {args.listen} is already in use; pick another with --listen",
              file=sys.stderr)
        return 2
    try:
        binary = find_redis_server()
    except ServerNotFound as exc:
        print(f"ringleader up: {exc}", file=sys.stderr)
        return 2
    nodes = []
    replicas: list[list] = []
    try:
        next_port = args.base_port

        def start(options=None):
            nonlocal next_port
            wanted, next_port = next_port, next_port + 1
            if not port_accepts("127.0.0.1", wanted):
                try:
                    return start_redis(wanted, binary=binary, options=options)
                except RuntimeError:  # taken meanwhile: any free port will do
                    pass
            return start_redis(None, binary=binary, options=options)

        for _ in range(args.count):
            primary = start()
            nodes.append(primary)
            replicas.append([start(RedisOptions(replicaof=primary.address))
                             for _ in range(args.replicas)])
        config = from_mapping({
            "listen": args.listen,
            "nodes": [{"address": n.address, "replicas": [r.address for r in mine]}
                      for n, mine in zip(nodes, replicas, strict=True)],
        }, "ringleader up")

        def announce(server) -> None:
            print(f"ringleader {__version__}: proxy on {args.listen}, "
                  f"{len(nodes)} local redis-server nodes: "
                  + ", ".join(n.address for n in nodes), flush=True)
            if args.replicas:
                print("replicas: " + "; ".join(
                    f"{n.address} -> {', '.join(r.address for r in mine)}"
                    for n, mine in zip(nodes, replicas, strict=True)), flush=True)
            print(f"connect with:  redis-cli -h {host} -p {port}", flush=True)
            print("press Ctrl-C to stop everything", flush=True)

        trio.run(functools.partial(run_proxy, config, announce=announce))
    finally:
        for node in [*nodes, *(r for mine in replicas for r in mine)]:
            node.stop()
        if nodes:
            print("ringleader up: stopped the proxy and its nodes", flush=True)
    return 0


def cmd_locate(args: argparse.Namespace) -> int:
    config = _config_from_args(args, need_listen=False)
    placement = config.placement()
    for key in args.keys:
        index = placement.node_index(key.encode())
        node = config.nodes[index]
        label = f" ({node.name})" if node.name else ""
        print(f"{key}\t{node.address}{label}")
    return 0


def cmd_commands(args: argparse.Namespace) -> int:
    from .commands import CommandTable
    from .route_table import RouteTable

    config = from_node_list("127.0.0.1:1")
    table = RouteTable(CommandTable.default(), config.placement(), ["node"])
    for name, how in table.describe().items():
        print(f"{name}\t{how}")
    return 0


def _default_state_dir():
    from rebalancer.store import default_state_dir

    return default_state_dir()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringleader", description="A sharding proxy for Redis-protocol storage nodes.")
    parser.add_argument("--version", action="version", version=f"ringleader {__version__}")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start local redis-server nodes and the proxy in front")
    up.add_argument("--listen", default=DEFAULT_LISTEN)
    up.add_argument("--count", type=int, default=3, help="how many nodes (default 3)")
    up.add_argument("--base-port", type=int, default=7001,
                    help="first node port (default 7001); busy ports are replaced by free ones")
    up.add_argument("--replicas", type=int, default=0,
                    help="replicas per shard (real Redis replication; default 0)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run the proxy in front of existing nodes")
    _add_source_options(serve)
    serve.add_argument("--listen", help=f"address to listen on (default {DEFAULT_LISTEN}, or "
                       "the twemproxy pool's listen)")
    serve.add_argument("--requirepass", help="password clients must AUTH with")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port")
    serve.add_argument("--state-dir", nargs="?", metavar="DIR",
                       const=str(_default_state_dir()),
                       help="keep the topology in DIR (default when given without DIR: "
                            f"{_default_state_dir()}); a restarted proxy serves the stored "
                            "topology, and online changes survive restarts")
    serve.add_argument("--admin-password", help="password for RINGLEADER admin commands")
    serve.add_argument("--hotkeys", action="store_true",
                       help="detect hot keys and cache their reads (default settings; a "
                            "[hotkeys] table in --config sets them)")
    serve.set_defaults(func=cmd_serve)

    locate = sub.add_parser("locate", help="print the node each key maps to")
    _add_source_options(locate)
    locate.add_argument("keys", nargs="+")
    locate.set_defaults(func=cmd_locate)

    commands = sub.add_parser("commands", help="how every Redis command is served")
    commands.set_defaults(func=cmd_commands)
    from rebalancer.admin_cli import add_admin_parser
    add_admin_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"ringleader: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
