"""The in-band admin protocol: ``RINGLEADER <SUBCOMMAND> ...`` sent to the proxy like any
command (so ``redis-cli RINGLEADER STATUS`` works), answered with a JSON document in a bulk
string, or an error reply. ``ringleader admin`` (rebalancer/admin_cli.py) is its client.

Subcommands: STATUS, ADD-NODE host:port [WEIGHT w] [NAME n] [DRY-RUN], REMOVE-NODE id
[DRY-RUN], MOVE token[,token...] target [DRY-RUN], REBALANCE [TARGET x] [CHURN y] [DRY-RUN],
MIGRATIONS, CANCEL id, ARCS [shard], HOTKEYS, AUTH password (when an admin password is
configured).
"""

from __future__ import annotations

import hmac
import json
import logging

import trio

from backends.client import NodeClient
from router import resp
from router.routes import Route, Sink

from .manager import AdminError, new_shard

log = logging.getLogger("ringleader.admin")


class AdminRoute(Route):
    """Routes ``RINGLEADER ...`` to the admin handler; replies arrive when the work is done."""

    __slots__ = ()

    def run(self, args: list[bytes], sink: Sink) -> None:
        server = getattr(sink, "server", None)
        if server is None:
            sink.reply(resp.error("ERR ringleader: admin commands are served by the proxy"))
            return
        server.admin.handle(args, sink)

    def describe(self) -> str:
        return "ringleader's admin protocol (rebalancer/admin.py)"


def _flags(args: list[str]) -> tuple[dict[str, str], set[str], list[str]]:
    """Options with a value, bare flags, and the positional words."""
    valued = {"WEIGHT", "NAME", "TARGET", "CHURN"}
    options: dict[str, str] = {}
    flags: set[str] = set()
    words: list[str] = []
    i = 0
    while i < len(args):
        word = args[i].upper()
        if word in valued and i + 1 < len(args):
            options[word] = args[i + 1]
            i += 2
        elif word == "DRY-RUN":
            flags.add(word)
            i += 1
        else:
            words.append(args[i])
            i += 1
    return options, flags, words


class Admin:
    def __init__(self, server) -> None:
        self.server = server

    def handle(self, args: list[bytes], session) -> None:
        words = [a.decode(errors="replace") for a in args[1:]]
        if not words:
            session.reply(resp.error("ERR wrong number of arguments for 'ringleader' command"))
            return
        sub = words[0].upper()
        password = self.server.config.admin_password
        if sub == "AUTH":
            given = words[1] if len(words) > 1 else ""
            if password is None or hmac.compare_digest(given.encode(), password.encode()):
                session.admin_ok = True
                session.reply(resp.OK)
            else:
                session.reply(resp.error("WRONGPASS invalid admin password"))
            return
        if password is not None and not getattr(session, "admin_ok", False):
            session.reply(resp.error("NOAUTH ringleader: admin commands need RINGLEADER AUTH "
                                     "<admin password> first"))
            return
        handler = getattr(self, "cmd_" + sub.lower().replace("-", "_"), None)
        if handler is None:
            session.reply(resp.error(f"ERR ringleader: unknown admin command '{words[0]}'; try "
                                     "STATUS, ADD-NODE, REMOVE-NODE, MOVE, REBALANCE, "
                                     "MIGRATIONS, CANCEL, HOTKEYS"))
            return
        slot = session.reply_later()

        async def work() -> None:
            try:
                document = await handler(words[1:])
                raw = resp.bulk(json.dumps(document, default=_json_default))
            except AdminError as exc:
                raw = resp.error(str(exc))
            except Exception as exc:  # report, never crash the proxy
                log.exception("admin %s failed", sub)
                raw = resp.error(f"ERR ringleader: {sub} failed: {exc}")
            session.complete(slot, raw)

        self.server.spawn(work)

    # ------------------------------------------------------------------ subcommands

    async def cmd_status(self, args: list[str]) -> dict:
        server = self.server
        manager = server.manager
        topology = manager.topology
        shares = topology.ownership_fractions()
        sizes = await self._dbsizes(topology)
        shards = []
        for index, shard in enumerate(topology.shards):
            conns = [c for c in server.backend.all_connections() if c.node.address ==
                     shard.primary.address]
            shards.append({
                "id": shard.id, "address": shard.primary.address,
                "replicas": [r.address for r in shard.replicas],
                "state": conns[0].state if conns else "unknown",
                "keys": sizes[index],
                "ops_per_sec": round(server.node_rates.get(shard.primary.address, 0.0), 1),
                "share": round(shares.get(shard.id, 0.0), 4),
            })
        return {"epoch": topology.epoch, "state_dir": str(manager.store.path)
                if manager.store is not None else None,
                "shards": shards, "migrations": manager.migrations_json(),
                "participants": manager.participants_json()}

    async def _dbsizes(self, topology) -> list[int | None]:
        config = self.server.config
        sizes: list[int | None] = []
        for shard in topology.shards:
            try:
                with trio.fail_after(2):
                    async with await NodeClient.connect(
                            shard.primary, username=config.node_username,
                            password=config.node_password, db=config.node_db) as client:
                        sizes.append(await client.call("DBSIZE"))
            except (OSError, ConnectionError, trio.TooSlowError, Exception):
                sizes.append(None)
        return sizes

    async def cmd_add_node(self, args: list[str]) -> dict:
        options, flags, words = _flags(args)
        if len(words) != 1:
            raise AdminError("ERR ringleader: ADD-NODE host:port [WEIGHT w] [NAME n] [DRY-RUN]")
        try:
            shard = new_shard(words[0], int(options.get("WEIGHT", 1)), options.get("NAME"))
        except ValueError as exc:
            raise AdminError(f"ERR ringleader: {exc}") from None
        plan = await self.server.manager.plan("add", shard=shard)
        return await self._run_plan(plan, "DRY-RUN" in flags)

    async def cmd_remove_node(self, args: list[str]) -> dict:
        _, flags, words = _flags(args)
        if len(words) != 1:
            raise AdminError("ERR ringleader: REMOVE-NODE host:port|id [DRY-RUN]")
        manager = self.server.manager
        plan = await manager.plan("remove", shard_id=manager.shard_id(words[0]))
        return await self._run_plan(plan, "DRY-RUN" in flags)

    async def cmd_rebalance(self, args: list[str]) -> dict:
        options, flags, _ = _flags(args)
        try:
            target = float(options.get("TARGET", 1.10))
            churn = float(options.get("CHURN", 0.10))
        except ValueError:
            raise AdminError("ERR ringleader: TARGET and CHURN are numbers") from None
        plan = await self.server.manager.plan("rebalance", target=target, churn=churn)
        return await self._run_plan(plan, "DRY-RUN" in flags)

    async def cmd_move(self, args: list[str]) -> dict:
        _, flags, words = _flags(args)
        if len(words) != 2:
            raise AdminError("ERR ringleader: MOVE token[,token...] target [DRY-RUN]")
        try:
            tokens = [int(t) for t in words[0].split(",") if t]
        except ValueError:
            raise AdminError("ERR ringleader: arcs are given by their end tokens (integers)") from None
        return await self.server.manager.move(tokens, words[1], "DRY-RUN" in flags)

    async def _run_plan(self, plan, dry_run: bool) -> dict:
        document = {"plan": plan.to_json_dict(), "migrations": []}
        if not dry_run and plan.moves:
            migrations = await self.server.manager.execute(plan)
            document["migrations"] = [m.id for m in migrations]
        elif not dry_run and getattr(plan, "remove_after", None):
            await self.server.manager.execute(plan)
        return document

    async def cmd_migrations(self, args: list[str]) -> dict:
        return {"migrations": self.server.manager.migrations_json()}

    async def cmd_cancel(self, args: list[str]) -> dict:
        if len(args) != 1 or not args[0].isdigit():
            raise AdminError("ERR ringleader: CANCEL migration-id")
        reverse = await self.server.manager.cancel(int(args[0]))
        return {"cancelled": int(args[0]), "migrations": reverse}

    async def cmd_arcs(self, args: list[str]) -> dict:
        """The ring's arcs (of one shard, when named): what MOVE takes."""
        manager = self.server.manager
        topology = manager.topology
        wanted = manager.shard_id(args[0]) if args else None
        arcs = []
        for start, end, owner in topology.arcs():
            shard = topology.shards[owner].id if owner >= 0 else None
            if wanted is None or shard == wanted:
                arcs.append({"start": start, "end": end, "shard": shard})
        return {"epoch": topology.epoch, "arcs": arcs}

    async def cmd_hotkeys(self, args: list[str]) -> dict:
        hot = self.server.hot
        if hot is None:
            return {"hotkeys": [], "cache": {}, "enabled": False}
        return {"hotkeys": hot.describe(), "cache": hot.cache.stats(), "enabled": True}


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
