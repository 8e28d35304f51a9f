"""``ringleader admin``: the operator's command line, a client of the in-band admin protocol.

Every operation is one ``RINGLEADER <SUBCOMMAND> ...`` command sent to the proxy (the same
thing ``redis-cli -p 7000 RINGLEADER STATUS`` sends), answered by a JSON document; this module
only turns arguments into those commands and the documents into tables. Migrations run inside
the proxy, so the CLI can exit (or be interrupted) at any time without affecting them;
``--wait`` merely polls ``RINGLEADER MIGRATIONS`` until the ones it started have ended.

Rendering (``render_*``, ``progress_line``) is pure: documents in, text out, so it can be
tested without a proxy and reused by other tools. Exit codes: 0 success, 1 the operation
failed (an error reply, a failed or cancelled migration), 2 usage, connection or
authentication problems, 130 interrupted.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.retry import Retry

__all__ = [
    "AdminClient",
    "AdminFailure",
    "add_admin_parser",
    "build_request",
    "main",
    "progress_line",
    "render_hotkeys",
    "render_migrations",
    "render_plan",
    "render_status",
    "run_admin",
]

PASSWORD_ENV = "RINGLEADER_ADMIN_PASSWORD"
PROXY_ENV = "RINGLEADER_PROXY"
DEFAULT_PROXY = "127.0.0.1:7000"  # what ``ringleader up`` and ``serve`` listen on by default
DEFAULT_TIMEOUT = 30.0
FINAL_STATES = frozenset({"done", "failed", "cancelled"})

#: Seconds between two ``RINGLEADER MIGRATIONS`` polls under ``--wait``.
POLL_INTERVAL = 0.5
#: Without a terminal, one progress line per this many seconds (and on every state change):
#: a log file needs a heartbeat, not 120 lines a minute.
PLAIN_PROGRESS_EVERY = 5.0
#: How long ``--wait`` keeps retrying a proxy that went away (a restart resumes migrations).
RECONNECT_GRACE = 30.0
#: How long a started migration may be missing from ``RINGLEADER MIGRATIONS`` before the wait
#: gives up on it (a proxy restarted after it finished may have no record of it).
MISSING_GRACE = 10.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --- errors and transport ----------------------------------------------------------------------


class AdminFailure(Exception):
    """Anything that ends the command; ``exit_code`` is what the process should return, so
    scripts can tell "the proxy said no" (1) from "could not ask the proxy" (2)."""

    exit_code = EXIT_FAILED


class ProxyUnreachable(AdminFailure):
    exit_code = EXIT_USAGE


class AdminAuthFailed(AdminFailure):
    exit_code = EXIT_USAGE


class AdminClient:
    """One connection to the proxy's admin protocol.

    The admin password is sent as ``RINGLEADER AUTH`` from redis-py's connect hook rather than
    once up front: the proxy remembers it per connection, and a ``--wait`` that outlives a
    proxy restart reconnects, so every new connection must authenticate again by itself.
    """

    def __init__(self, address: str, password: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        host, port = parse_address(address)

        def connect(connection: Any) -> None:
            connection.on_connect()
            connection.send_command("RINGLEADER", "AUTH", password)
            connection.read_response()

        self._redis = redis.Redis(
            host=host, port=port, protocol=2, decode_responses=True,
            socket_timeout=timeout, socket_connect_timeout=min(timeout, 10.0),
            # Our own loop decides about retrying (only --wait does); redis-py's default
            # retries would turn "connection refused" into a slow, silent pause.
            retry=Retry(NoBackoff(), 0), redis_connect_func=connect if password else None,
            **_NO_CLIENT_SETINFO)

    def call(self, *words: str) -> dict[str, Any]:
        """Send ``RINGLEADER *words`` and return the decoded JSON document."""
        command = words[0] if words else ""
        try:
            raw = self._redis.execute_command("RINGLEADER", *words)
        except AuthenticationError as exc:
            raise AdminAuthFailed(_auth_message(self.address, str(exc))) from None
        except redis.TimeoutError:
            raise ProxyUnreachable(
                f"no reply from the proxy at {self.address} within {self.timeout:g} s"
                + ("" if command in ("STATUS", "MIGRATIONS", "HOTKEYS") else
                   " (the operation may still have been done: check `migrations`)")) from None
        except redis.ConnectionError as exc:
            raise ProxyUnreachable(f"cannot reach the proxy at {self.address}: {exc}") from None
        except redis.ResponseError as exc:
            raise AdminFailure(_error_message(self.address, command, str(exc))) from None
        if isinstance(raw, bytes):
            raw = raw.decode(errors="replace")
        try:
            document = json.loads(raw)
        except (TypeError, ValueError):
            raise AdminFailure(f"{command}: unexpected reply from {self.address} (not JSON): "
                               f"{str(raw)[:200]!r}") from None
        if not isinstance(document, dict):
            raise AdminFailure(f"{command}: unexpected reply from {self.address}: "
                               f"{str(raw)[:200]!r}")
        return document

    def close(self) -> None:
        self._redis.close()


#: Keeps redis-py from sending CLIENT SETINFO on connect: the proxy then sees nothing but
#: RINGLEADER commands (redis-py 8 spells this driver_info=None, earlier ones lib_name=None).
_NO_CLIENT_SETINFO: dict[str, Any] = (
    {"driver_info": None} if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None})


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) for the proxy; a ``ValueError`` names the problem."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad proxy address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _auth_message(address: str, error: str) -> str:
    if error.upper().startswith("NOAUTH") or "RINGLEADER AUTH" in error.upper():
        return (f"the proxy at {address} needs the admin password: give --password or set "
                f"{PASSWORD_ENV}")
    return f"the proxy at {address} refused the admin password ({error})"


def _error_message(address: str, command: str, error: str) -> str:
    text = error
    for prefix in ("ERR ", "ringleader: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if "unknown command" in error.lower() and "ringleader" in error.lower():
        text += f" (is {address} a ringleader proxy?)"
    return f"{command} failed: {text}" if command else text


# --- requests ----------------------------------------------------------------------------------


def parse_tokens(text: str) -> list[int]:
    """Arc end tokens, decimal or ``0x`` hex (the dry-run table prints them in hex)."""
    tokens = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            tokens.append(int(part, 0))
        except ValueError:
            raise ValueError(f"bad arc token {part!r}: expected an integer (decimal or "
                             "0x hex), the arc's end token") from None
        if tokens[-1] < 0:
            raise ValueError(f"bad arc token {part!r}: tokens are not negative")
    if not tokens:
        raise ValueError("--arc needs at least one token")
    return tokens


def build_request(args: argparse.Namespace) -> list[str]:
    """The words after ``RINGLEADER`` for a parsed admin command line; kept apart from the
    I/O so the exact protocol each subcommand speaks is testable and documented in one place.
    A ``ValueError`` is a usage error."""
    action = args.action
    dry_run = ["DRY-RUN"] if getattr(args, "dry_run", False) else []
    if action == "status":
        return ["STATUS"]
    if action == "add-node":
        parse_address(args.address)
        words = ["ADD-NODE", args.address]
        if args.weight is not None:
            if args.weight < 1:
                raise ValueError("--weight must be a positive integer")
            words += ["WEIGHT", str(args.weight)]
        if args.name:
            words += ["NAME", args.name]
        return words + dry_run
    if action == "remove-node":
        return ["REMOVE-NODE", args.node] + dry_run
    if action == "move":
        tokens = [t for arc in args.arc for t in parse_tokens(arc)]
        return ["MOVE", ",".join(map(str, tokens)), args.to] + dry_run
    if action == "rebalance":
        words = ["REBALANCE"]
        if args.target is not None:
            if args.target < 1.0:
                raise ValueError("--target is a max/mean ratio: 1.0 or more")
            words += ["TARGET", repr(args.target)]
        if args.churn is not None:
            if not 0.0 < args.churn <= 1.0:
                raise ValueError("--churn is a fraction of the keys: above 0, at most 1")
            words += ["CHURN", repr(args.churn)]
        return words + dry_run
    if action == "migrations":
        return ["MIGRATIONS"]
    if action == "cancel":
        return ["CANCEL", str(args.id)]
    if action == "hotkeys":
        return ["HOTKEYS"]
    raise ValueError(f"unknown admin command {action!r}")


# --- rendering ---------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Aligned columns: text left, numbers right (``right`` names their columns)."""
    right = set(right)
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.rjust(widths[c]) if c in right else cell.ljust(widths[c])
                      for c, cell in enumerate(row)).rstrip() for row in rows]


def _int(value: Any) -> str:
    return "?" if value is None else f"{round(value):,}"


def _ops(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _share(value: Any) -> str:
    return "?" if value is None else f"{value:.2%}"


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render_status(doc: Mapping[str, Any]) -> str:
    """``status``: the shards with their keys, ops/s and hash share, then migrations and the
    participants, so one screen answers "is the cluster healthy and is anything moving?"."""
    lines = [f"epoch {doc.get('epoch', '?')}   state dir: "
             f"{doc.get('state_dir') or '(none: topology kept in memory)'}"]
    shards = list(doc.get("shards") or [])
    lines.append("")
    if not shards:
        lines.append("no shards")
    else:
        named = any(s.get("id") != s.get("address") for s in shards)
        head = (["shard"] if named else []) + ["address", "state", "keys", "ops/s", "share",
                                              "replicas"]
        rows = [head]
        for s in shards:
            rows.append(([str(s.get("id", "?"))] if named else []) + [
                str(s.get("address", "?")), str(s.get("state", "?")), _int(s.get("keys")),
                _ops(s.get("ops_per_sec")), _share(s.get("share")),
                ", ".join(s.get("replicas") or []) or "-"])
        keys = [s.get("keys") for s in shards]
        rows.append(([""] if named else []) + [
            "total", "", _int(sum(keys)) if None not in keys else "?",
            _ops(sum(s.get("ops_per_sec") or 0.0 for s in shards)),
            _share(sum(s.get("share") or 0.0 for s in shards)), ""])
        first_number = 3 if named else 2
        lines.extend(_table(rows, right=range(first_number, first_number + 3)))
        down = [s for s in shards if s.get("state") not in ("up", None)]
        for s in down:
            lines.append(f"warning: shard {s.get('id')} ({s.get('address')}) is "
                         f"{s.get('state')}")
    migrations = list(doc.get("migrations") or [])
    active = [m for m in migrations if m.get("state") not in FINAL_STATES]
    finished = len(migrations) - len(active)
    lines.append("")
    if active:
        lines.append(f"migrations in progress ({len(active)}):")
        lines.extend("  " + line for line in render_migrations(
            {"migrations": active}).splitlines())
    else:
        lines.append("no migration in progress")
    if finished:
        lines.append(f"{finished} finished migration{'s' if finished != 1 else ''} "
                     "(`ringleader admin migrations` lists them)")
    participants = list(doc.get("participants") or [])
    if participants:
        epoch = doc.get("epoch")
        lines.append("")
        lines.append("participants:")
        rows = [["id", "kind", "acked epoch", "alive"]]
        for p in participants:
            acked = p.get("acked_epoch")
            behind = " (behind)" if isinstance(acked, int) and isinstance(epoch, int) and \
                acked < epoch and p.get("alive") else ""
            rows.append([str(p.get("id", "?")), str(p.get("kind", "?")),
                         f"{acked}{behind}", "yes" if p.get("alive") else "no (gone)"])
        lines.extend("  " + line for line in _table(rows))
    return "\n".join(lines)


def _arc_count(arcs: Any) -> int:
    """Plans list the arcs' end tokens; the proxy's MOVE dry run gives only their count."""
    if isinstance(arcs, int):
        return arcs
    return len(arcs or [])


def _mean_per_weight(loads: Mapping[str, Mapping[str, Any]], dimension: str) -> float:
    weight = sum(load.get("weight") or 1 for load in loads.values())
    return sum(load.get(dimension) or 0.0 for load in loads.values()) / weight if weight else 0.0


def _imbalance(loads: Mapping[str, Mapping[str, Any]], dimension: str) -> float:
    mean = _mean_per_weight(loads, dimension)
    if mean <= 0 or not loads:
        return 1.0
    return max((load.get(dimension) or 0.0) / (load.get("weight") or 1)
               for load in loads.values()) / mean


def render_plan(doc: Mapping[str, Any]) -> str:
    """The dry run (and the record of what a real run started): moves with arcs, source →
    target, keys and bytes, then each shard's expected load against the mean.

    Takes either a whole ADD-NODE/REMOVE-NODE/MOVE/REBALANCE reply (``{"plan", "migrations"}``)
    or just its plan. Mirrors ``Plan.describe()``, working from the JSON only, so fields the
    JSON leaves out (key counts unknown, no byte or ops estimates) show as ``?``/``-``.
    """
    plan: Mapping[str, Any] = (doc.get("plan") or {}) if "plan" in doc else doc
    started = list(doc.get("migrations") or []) if "plan" in doc else []
    kind = plan.get("kind", "?")
    moves = list(plan.get("moves") or [])
    remove_after = plan.get("remove_after")
    what = {"add-node": f"add shard {plan.get('added_shard') or '?'}",
            "remove-node": f"remove shard {remove_after or '?'}",
            "rebalance": "rebalance", "move": "move arcs"}.get(kind, str(kind))
    epoch = plan.get("base_epoch")
    # The proxy's MOVE reply after starting it has no moves: only the migrations say more.
    untold = not moves and bool(started)
    details = ([f"from epoch {epoch}"] if epoch is not None else []) + (
        [] if untold else [f"{len(moves)} move{'s' if len(moves) != 1 else ''}"])
    lines = [f"plan: {what}" + (f" ({', '.join(details)})" if details else "")]
    keys_known = plan.get("keys_known", True)
    bytes_known = plan.get("bytes_known", any(m.get("bytes") for m in moves))
    ops_known = plan.get("ops_known", any(m.get("ops") for m in moves) or any(
        (v.get("ops") or 0) for v in (plan.get("load_after") or {}).values()))

    def keys(value: Any) -> str:
        return _int(value) if keys_known else "?"

    def size(value: Any) -> str:
        return _bytes(value) if bytes_known and value is not None else "-"

    def ops(value: Any) -> str:
        return _ops(value) if ops_known and value is not None else "-"

    split_points = plan.get("split_points")
    if split_points:
        count = split_points if isinstance(split_points, int) else len(split_points)
        lines.append(f"  {count:,} split points inserted")
    if untold:
        pass
    elif not moves:
        lines.append("  nothing to move")
    else:
        rows = [["#", "arcs", "source", "", "target", "keys", "bytes", "share", "ops/s"]]
        for n, move in enumerate(moves, 1):
            rows.append([str(n), f"{_arc_count(move.get('arcs')):,}", str(move.get("source")),
                         "->", str(move.get("target")), keys(move.get("keys")),
                         size(move.get("bytes")), _share(move.get("share")),
                         ops(move.get("ops"))])
        if len(moves) > 1 or "keys" in moves[0]:
            def total(field: str) -> Any:
                values = [m.get(field) for m in moves]
                return None if None in values else sum(values)
            rows.append(["", f"{sum(_arc_count(m.get('arcs')) for m in moves):,}", "total", "",
                         "", keys(plan.get("keys_moved", total("keys"))),
                         size(plan.get("bytes_moved", total("bytes"))),
                         _share(total("share")), ops(total("ops"))])
        lines.extend("  " + line for line in _table(rows, right={0, 1, 5, 6, 7, 8}))
        for n, move in enumerate(moves, 1):
            arcs = move.get("arcs")
            if isinstance(arcs, list) and 0 < len(arcs) <= 3:
                lines.append(f"  move {n} arcs ending at: "
                             + ", ".join(f"0x{int(a):x}" for a in arcs))
        before = plan.get("load_before") or {}
        total_keys = sum((v.get("keys") or 0) for v in before.values())
        moved = plan.get("keys_moved")
        if keys_known and total_keys and moved is not None:
            lines.append(f"  moves {moved / total_keys:.1%} of {_int(total_keys)} keys")
    after = plan.get("load_after") or {}
    if after:
        staying = {k: v for k, v in after.items() if k != remove_after}
        mean_keys = _mean_per_weight(staying, "keys") if keys_known else 0.0
        mean_ops = _mean_per_weight(staying, "ops") if ops_known else 0.0

        def ratio(value: Any, expected: float) -> str:
            return f"{(value or 0.0) / expected:.2f}" if expected > 0 else "-"

        lines.append("")
        lines.append("expected load after:")
        rows = [["shard", "weight", "keys", "x mean", "ops/s", "x mean", "share"]]
        for shard_id, load in after.items():
            weight = load.get("weight") or 1
            rows.append([shard_id if shard_id in staying else f"{shard_id} (removed)",
                         str(weight), keys(load.get("keys")),
                         ratio(load.get("keys"), mean_keys * weight), ops(load.get("ops")),
                         ratio(load.get("ops"), mean_ops * weight), _share(load.get("share"))])
        lines.extend("  " + line for line in _table(rows, right={1, 2, 3, 4, 5, 6}))
        before = plan.get("load_before") or {}
        if before:
            summary = []
            for dimension in (("keys",) if keys_known else ("share",)) + (
                    ("ops",) if ops_known else ()):
                summary.append(f"{dimension} {_imbalance(before, dimension):.2f} -> "
                               f"{_imbalance(staying, dimension):.2f}")
            lines.append("  max/mean: " + ", ".join(summary))
    if plan.get("target") is not None:
        verdict = "reached" if plan.get("reached_target", True) else "NOT reached"
        churn = plan.get("churn")
        budget = f" (churn budget {churn:.0%} of keys)" if churn is not None else ""
        lines.append(f"  target {plan['target']:.2f}: {verdict}{budget}")
    if remove_after:
        lines.append(f"  then remove shard {remove_after}")
    lines.extend(f"  note: {note}" for note in plan.get("notes") or [])
    if started:
        lines.append("")
        lines.append(f"started migration{'s' if len(started) != 1 else ''} "
                     + ", ".join(map(str, started)))
    return "\n".join(lines)


def render_migrations(doc: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                      now: float | None = None) -> str:
    """``migrations``: one row per migration (in progress and history), then the details a
    row cannot hold: keys too big to MIGRATE (they need an operator) and messages."""
    migrations = list(doc.get("migrations") or []) if isinstance(doc, Mapping) else list(doc)
    if not migrations:
        return "no migrations"
    now = time.time() if now is None else now
    rows = [["id", "source", "", "target", "arcs", "state", "moved", "scanned", "left",
             "keys/s", "time", "errors"]]
    for m in migrations:
        started, finished = m.get("started"), m.get("finished")
        elapsed = None if started is None else (finished if finished is not None else now) - started
        final = m.get("state") in FINAL_STATES
        rows.append([str(m.get("id", "?")), str(m.get("source", "?")), "->",
                     str(m.get("target", "?")), _int(_arc_count(m.get("arcs"))),
                     str(m.get("state", "?")), _int(m.get("moved")), _int(m.get("scanned")),
                     "-" if final else _int(m.get("remaining_estimate")),
                     "-" if final else _ops(m.get("keys_per_sec")), _duration(elapsed),
                     _int(m.get("errors") or 0)])
    lines = _table(rows, right={0, 4, 6, 7, 8, 9, 10, 11})
    for m in migrations:
        too_big = list(m.get("too_big") or [])
        if too_big:
            shown = ", ".join(too_big[:10]) + (f", ... ({len(too_big) - 10} more)"
                                               if len(too_big) > 10 else "")
            lines.append(f"migration {m.get('id')}: {len(too_big)} key"
                         f"{'s' if len(too_big) != 1 else ''} too big to MIGRATE within the "
                         f"timeout, not moved: {shown}")
        if m.get("message"):
            lines.append(f"migration {m.get('id')}: {m['message']}")
    return "\n".join(lines)


def render_hotkeys(doc: Mapping[str, Any]) -> str:
    """``hotkeys``: the hot keys with their estimated rate, owner and mitigation, then the
    near cache's counters."""
    hot = list(doc.get("hotkeys") or [])
    lines = []
    if doc.get("enabled") is False:
        lines.append("hot-key detection is off in this proxy (serve --hotkeys, or a [hotkeys] "
                     "table in the config)")
    elif not hot:
        lines.append("no hot keys")
    else:
        rows = [["key", "ops/s", "node", "mitigation"]]
        for h in sorted(hot, key=lambda h: -(h.get("ops_per_sec") or 0.0)):
            rows.append([_printable(h.get("key")), _ops(h.get("ops_per_sec")),
                         str(h.get("node", "?")), str(h.get("mitigation", "?"))])
        lines.extend(_table(rows, right={1}))
    cache = doc.get("cache") or {}
    if cache:
        lines.append("")
        lines.append("cache: " + ", ".join(
            f"{name} {_bytes(value) if name == 'bytes' else _count(value)}"
            for name, value in cache.items()))
        hits, misses = cache.get("hits"), cache.get("misses")
        if isinstance(hits, int | float) and isinstance(misses, int | float) and hits + misses:
            lines[-1] += f" (hit rate {hits / (hits + misses):.1%})"
    return "\n".join(lines)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int | float) else str(value)


def _printable(key: Any) -> str:
    """A key as a table cell: control characters escaped so one key stays one line."""
    text = "?" if key is None else str(key)
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def progress_line(migrations: Sequence[Mapping[str, Any]]) -> str:
    """One line for everything ``--wait`` follows: states, keys moved and left (with a bar
    when the proxy has an estimate), the rate and the time left at that rate."""
    if not migrations:
        return "waiting for the proxy to report the migrations"
    states = Counter(str(m.get("state", "?")) for m in migrations)
    order = ["waiting-barrier", "moving", "verifying", "done", "failed", "cancelled"]
    parts = [f"{states[s]} {s}" for s in order if states[s]] + [
        f"{n} {s}" for s, n in sorted(states.items()) if s not in order]
    if len(migrations) == 1:
        m = migrations[0]
        head = f"migration {m.get('id')} ({m.get('source')} -> {m.get('target')}): " \
               f"{m.get('state')}"
    else:
        head = (f"migrations {', '.join(str(m.get('id')) for m in migrations)}: "
                + ", ".join(parts))
    moved = sum(m.get("moved") or 0 for m in migrations)
    active = [m for m in migrations if m.get("state") not in FINAL_STATES]
    remaining: int | None = 0
    for m in active:
        if m.get("remaining_estimate") is None:
            remaining = None
            break
        remaining += m["remaining_estimate"]
    rate = sum(m.get("keys_per_sec") or 0.0 for m in active)
    text = f"{head} | {moved:,} moved"
    if remaining is not None and active:
        text += f", ~{remaining:,} left"
        total = moved + remaining
        fraction = moved / total if total else 1.0
        width = 20
        filled = min(width, int(fraction * width))
        text += f" [{'#' * filled}{'.' * (width - filled)}] {fraction:.0%}"
    elif active:
        scanned = sum(m.get("scanned") or 0 for m in active)
        text += f" (scanned {scanned:,}, remaining unknown)"
    if active:
        text += f" | {rate:,.0f} keys/s"
        if remaining and rate > 0:
            text += f", eta {_duration(remaining / rate)}"
    return text


# --- waiting -----------------------------------------------------------------------------------


class _ProgressWriter:
    """On a terminal, one line rewritten in place; elsewhere, a line now and then (and on
    every state change), since carriage returns make a mess of log files."""

    def __init__(self, stream: TextIO, clock: Callable[[], float]) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.clock = clock
        self.last_plain: float | None = None
        self.last_states: tuple[str, ...] | None = None
        self.width = 0

    def show(self, line: str, states: tuple[str, ...]) -> None:
        if self.tty:
            pad = max(0, self.width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.width = len(line)
        else:
            now = self.clock()
            if (self.last_plain is not None and states == self.last_states
                    and now - self.last_plain < PLAIN_PROGRESS_EVERY):
                return
            self.last_plain = now
            self.stream.write(line + "\n")
        self.last_states = states
        self.stream.flush()

    def note(self, text: str) -> None:
        self.end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.width = 0


def wait_for_migrations(client: AdminClient, ids: Sequence[int], *, stream: TextIO,
                        sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    """Poll ``RINGLEADER MIGRATIONS`` until every migration in ``ids`` has ended; returns
    their final records (a synthetic ``"unknown"`` one for a migration the proxy stopped
    reporting). Proxy restarts are waited out for ``RECONNECT_GRACE`` seconds, since the
    migrations resume with it."""
    wanted = [int(i) for i in ids]
    writer = _ProgressWriter(stream, clock)
    lost_since: float | None = None
    missing_since: dict[int, float] = {}
    given_up: dict[int, dict[str, Any]] = {}
    try:
        while True:
            try:
                document = client.call("MIGRATIONS")
            except ProxyUnreachable as exc:
                now = clock()
                if lost_since is None:
                    lost_since = now
                    writer.note(f"{exc}; retrying for {RECONNECT_GRACE:g} s (migrations go "
                                "on inside the proxy)")
                elif now - lost_since > RECONNECT_GRACE:
                    raise
                sleep(POLL_INTERVAL)
                continue
            if lost_since is not None:
                writer.note(f"reconnected to {client.address}")
                lost_since = None
            by_id = {int(m["id"]): m for m in document.get("migrations") or []
                     if isinstance(m, Mapping) and "id" in m}
            now = clock()
            current: list[dict[str, Any]] = []
            for mid in wanted:
                if mid in by_id:
                    missing_since.pop(mid, None)
                    current.append(dict(by_id[mid]))
                    continue
                if mid not in given_up:
                    since = missing_since.setdefault(mid, now)
                    if now - since <= MISSING_GRACE:
                        continue
                    given_up[mid] = {"id": mid, "state": "unknown", "moved": 0,
                                     "message": "no longer reported by the proxy (restarted "
                                                "after it ended?): outcome unknown, check "
                                                "`ringleader admin status`"}
                current.append(given_up[mid])
            shown = [m for m in current if m.get("state") != "unknown"]
            writer.show(progress_line(shown), tuple(str(m.get("state")) for m in current))
            if len(current) == len(wanted) and all(
                    m.get("state") in FINAL_STATES or m.get("state") == "unknown"
                    for m in current):
                return current
            sleep(POLL_INTERVAL)
    finally:
        writer.end_line()
        stream.flush()


# --- the command -------------------------------------------------------------------------------


def _print_json(document: Any, out: TextIO) -> None:
    out.write(json.dumps(document, indent=2) + "\n")


def run_admin(args: argparse.Namespace, *, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """Runs a parsed ``ringleader admin`` command line; the exit code is the result."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    proxy = args.proxy or os.environ.get(PROXY_ENV) or DEFAULT_PROXY
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
    try:
        request = build_request(args)
        parse_address(proxy)
        if args.timeout <= 0:
            raise ValueError("--timeout must be positive")
    except ValueError as exc:
        err.write(f"ringleader admin: {exc}\n")
        return EXIT_USAGE
    client = AdminClient(proxy, password or None, args.timeout)
    started: list[int] = []
    try:
        document = client.call(*request)
        if args.json:
            _print_json(document, out)
        else:
            out.write(_render(args.action, document) + "\n")
        out.flush()
        started = [int(i) for i in document.get("migrations") or []] \
            if args.action in ("add-node", "remove-node", "move", "rebalance") else []
        if not getattr(args, "wait", False) or not started:
            if started and not args.json:
                out.write(f"follow with: ringleader admin --proxy {proxy} migrations "
                          "(or --wait next time)\n")
            return EXIT_OK
        final = wait_for_migrations(client, started, stream=err)
        failed = [m for m in final if m.get("state") != "done"]
        if not args.json:
            out.write("\n" + render_migrations(final) + "\n")
        if failed:
            err.write("ringleader admin: " + "; ".join(
                f"migration {m.get('id')} {m.get('state')}"
                + (f": {m['message']}" if m.get("message") else "") for m in failed) + "\n")
            return EXIT_FAILED
        if not args.json:
            out.write(f"all {len(final)} migration{'s' if len(final) != 1 else ''} done\n")
        return EXIT_OK
    except AdminFailure as exc:
        err.write(f"ringleader admin: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        if started:
            err.write(f"ringleader admin: stopped waiting; migration"
                      f"{'s' if len(started) != 1 else ''} {', '.join(map(str, started))} "
                      f"go on inside the proxy (ringleader admin --proxy {proxy} migrations; "
                      f"cancel ID to stop)\n")
        else:
            err.write("\nringleader admin: interrupted\n")
        return EXIT_INTERRUPTED
    finally:
        out.flush()
        client.close()


def _render(action: str, document: Mapping[str, Any]) -> str:
    if action == "status":
        return render_status(document)
    if action in ("add-node", "remove-node", "move", "rebalance"):
        return render_plan(document)
    if action == "migrations":
        return render_migrations(document)
    if action == "cancel":
        mid = document.get("cancelled")
        return (f"migration {mid} cancelled: its arcs stay with the source, and keys it had "
                "already moved go back (see `ringleader admin migrations`)")
    if action == "hotkeys":
        return render_hotkeys(document)
    return json.dumps(document, indent=2)  # pragma: no cover


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """The connection options, accepted both before and after the subcommand; after it they
    default to SUPPRESS so a value given before is not overwritten by a default."""
    parent = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if suppress else None
    parent.add_argument("--proxy", metavar="HOST:PORT", default=default,
                        help=f"the proxy to administer (default ${PROXY_ENV}, else "
                             f"{DEFAULT_PROXY})")
    parent.add_argument("--password", metavar="PW", default=default,
                        help=f"the proxy's admin password (default ${PASSWORD_ENV})")
    parent.add_argument("--timeout", metavar="S", type=float,
                        default=argparse.SUPPRESS if suppress else DEFAULT_TIMEOUT,
                        help=f"seconds to wait for each reply (default {DEFAULT_TIMEOUT:g})")
    return parent


def add_admin_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers ``admin`` on ringleader's subcommands (``router.cli.build_parser``)."""
    admin = subparsers.add_parser(
        "admin", parents=[_common_options(False)],
        help="administer a running proxy: status, add/remove nodes, moves, hot keys",
        description="Administer a running ringleader proxy through its in-band admin "
                    "protocol (RINGLEADER <SUBCOMMAND>, which redis-cli can send too). "
                    "Exit codes: 0 success, 1 the operation failed, 2 usage or connection "
                    "error, 130 interrupted.")
    actions = admin.add_subparsers(dest="action", required=True, metavar="COMMAND")
    common = _common_options(True)

    def action(name: str, help_text: str, *, plan: bool = False) -> argparse.ArgumentParser:
        p = actions.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print the reply's JSON document")
        if plan:
            p.add_argument("--dry-run", action="store_true",
                           help="print the plan (arcs, source -> target, keys, bytes, load "
                                "after) without moving anything")
            p.add_argument("--wait", action="store_true",
                           help="follow the migrations until they end (progress on stderr); "
                                "exit 1 if any fails or is cancelled")
        return p

    action("status", "shards (keys, ops/s, share), epoch, migrations, participants")
    p = action("add-node", "add a shard: it takes about its weight's share of the keys",
               plan=True)
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("--weight", type=int, help="relative weight (default 1)")
    p.add_argument("--name", help="the shard's id (default its HOST:PORT)")
    p = action("remove-node", "drain a shard to the others, then remove it", plan=True)
    p.add_argument("node", metavar="HOST:PORT|ID")
    p = action("move", "move arcs (by end token) to a shard", plan=True)
    p.add_argument("--arc", action="append", required=True, metavar="TOKEN[,TOKEN...]",
                   help="end token of an arc, decimal or 0x hex; repeat or comma-separate")
    p.add_argument("--to", required=True, metavar="HOST:PORT|ID", help="the receiving shard")
    p = action("rebalance", "move arcs to bring max/mean load under a target", plan=True)
    p.add_argument("--target", type=float, help="max/mean goal (proxy default 1.10)")
    p.add_argument("--churn", type=float,
                   help="at most this fraction of the keys moves (proxy default 0.10)")
    action("migrations", "migrations in progress and finished")
    p = action("cancel", "cancel a migration (keys already moved go back)")
    p.add_argument("id", type=int, metavar="ID")
    action("hotkeys", "hot keys: estimated ops/s, owner, mitigation; near-cache counters")
    admin.set_defaults(func=run_admin)
    return admin


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rebalancer.admin_cli ...``: the same as ``ringleader admin ...``."""
    parser = argparse.ArgumentParser(prog="ringleader")
    add_admin_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["admin", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
