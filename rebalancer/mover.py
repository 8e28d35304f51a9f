"""The background mover: walks the source node with SCAN and MIGRATEs every key of the
moving arcs to the target, throttled, until the source holds none of them.

It runs only after the epoch barrier (every live participant routes the arcs with
move-then-serve), so clients and the mover never disagree about where a key is: a key is
either still on the source (and whoever touches it first moves it) or already on the target.
A pass that finds no key of the arcs left ends the migration. A crash loses nothing: the
source stays authoritative for keys not yet moved, and the next mover starts a new pass.

The proxy's own keys (hotkeys/reserved.py) are not all data: copies of replicated hot keys
and each node's registry of reserved keys stay where they are (copies are read on the node
they were made on; moving a registry would overwrite the target's). Parts of split counters
hold increments found nowhere else, so they move, and are registered on the target first so
that DBSIZE through the proxy keeps leaving them out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from backends.client import CommandError, NodeClient
from backends.migrating import migrate_head
from hotkeys.reserved import REGISTRY, moves_with_its_arc
from hotkeys.splitting import SUB_PREFIX
from router.nodes import NodeSpec

log = logging.getLogger("ringleader.mover")


class MoveStuck(Exception):
    """Keys remain that MIGRATE cannot move within its timeout (reported, never skipped)."""


@dataclass
class MoveSettings:
    #: Keys per MIGRATE, and keys per second (0: no limit; the manager shares it among the
    #: migrations under way). A MIGRATE blocks
    #: its source while it runs and the mover shares the proxy's loop, so both defaults
    #: favour the clients: unthrottled moves of 100-key batches cut the clients' throughput
    #: during an add-node to 0.3-0.4 of before on a 2-core machine; these gave 0.5-0.9
    #: (bench/README.md, online rebalancing).
    batch: int = 10
    scan_count: int = 500  # SCAN COUNT hint
    keys_per_sec: float = 2000.0
    bytes_per_sec: float = 0.0  # 0: no limit (needs MEMORY USAGE per key when set)
    migrate_timeout_ms: int = 5000
    retry_max: float = 5.0


@dataclass
class MoveProgress:
    """What ``RINGLEADER MIGRATIONS`` reports about one migration."""

    id: int
    source: str
    target: str
    arcs: int
    state: str = "waiting-barrier"  # moving, verifying, done, failed, cancelled
    scanned: int = 0
    moved: int = 0
    moved_on_access: int = 0
    remaining_estimate: int | None = None
    keys_per_sec: float = 0.0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    errors: int = 0
    too_big: list[str] = field(default_factory=list)
    message: str = ""
    passes: int = 0

    def to_json(self) -> dict:
        return {"id": self.id, "source": self.source, "target": self.target,
                "arcs": self.arcs, "state": self.state, "scanned": self.scanned,
                "moved": self.moved + self.moved_on_access,
                "remaining_estimate": self.remaining_estimate,
                "keys_per_sec": round(self.keys_per_sec, 1), "started": self.started,
                "finished": self.finished, "errors": self.errors, "too_big": self.too_big,
                "message": self.message}


class Throttle:
    """Keeps a long-run rate under ``per_sec`` by sleeping between batches."""

    def __init__(self, per_sec: float) -> None:
        self.per_sec = per_sec
        self.start = time.monotonic()
        self.done = 0.0

    async def spend(self, amount: float) -> None:
        self.done += amount
        if self.per_sec <= 0:
            return
        ahead = self.done / self.per_sec - (time.monotonic() - self.start)
        if ahead > 0:
            await trio.sleep(ahead)


async def move_arcs(*, progress: MoveProgress, source: NodeSpec, target: NodeSpec,
                    belongs, settings: MoveSettings, db: int = 0,
                    username: str | None = None, password: str | None = None,
                    checkpoint=None, on_moved: Callable[[list[bytes]], None] | None = None,
                    ) -> None:
    """Move every key for which ``belongs(key)`` is true from ``source`` to ``target``;
    returns when a full pass finds none left. Raises on cancellation only; node failures are
    retried with backoff (the source stays authoritative meanwhile). ``on_moved`` hears of
    every batch that left the source (the proxy then sends their requests straight to the
    target)."""
    delay = 0.1
    keys_throttle = Throttle(settings.keys_per_sec)
    bytes_throttle = Throttle(settings.bytes_per_sec)
    started = time.monotonic()
    head: list[object] = migrate_head(target, db=db, timeout_ms=settings.migrate_timeout_ms,
                                      username=username, password=password)

    async def register_on_target(names: list[bytes]) -> None:
        async with await NodeClient.connect(target, username=username, password=password,
                                            db=db) as client:
            await client.call("SADD", REGISTRY, *names)

    while True:
        try:
            async with await NodeClient.connect(source, username=username, password=password,
                                                db=db) as client:
                progress.state = "moving"
                while True:
                    stuck_before = progress.errors
                    found = await _one_pass(client, progress, belongs, head, settings,
                                            keys_throttle, bytes_throttle, started, checkpoint,
                                            register_on_target, on_moved)
                    progress.passes += 1
                    if found == 0:
                        progress.remaining_estimate = 0
                        return
                    if progress.too_big and progress.errors - stuck_before >= found:
                        raise MoveStuck(progress.message)
                    progress.state = "verifying"  # another pass: keys may have arrived late
                    delay = 0.1
        except (OSError, ConnectionError, trio.TooSlowError, CommandError) as exc:
            progress.errors += 1
            progress.message = f"retrying: {exc}"
            log.warning("migration %d: %s; retrying in %.1fs", progress.id, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, settings.retry_max)


async def _one_pass(client: NodeClient, progress: MoveProgress, belongs, head: list[object],
                    settings: MoveSettings, keys_throttle: Throttle, bytes_throttle: Throttle,
                    started: float, checkpoint, register_on_target, on_moved=None) -> int:
    """One full SCAN of the source; returns how many keys of the arcs it found (and moved)."""
    cursor = b"0"
    found = 0
    dbsize = await client.call("DBSIZE")
    while True:
        cursor, keys = await client.call("SCAN", cursor, "COUNT", settings.scan_count)
        progress.scanned += len(keys)
        mine = [k for k in keys if belongs(k) and moves_with_its_arc(k)]
        for i in range(0, len(mine), settings.batch):
            batch = mine[i:i + settings.batch]
            parts = [k for k in batch if k.startswith(SUB_PREFIX)]
            if parts:
                await register_on_target(parts)
            if settings.bytes_per_sec > 0:
                sizes = await client.pipeline([("MEMORY", "USAGE", k) for k in batch])
                await bytes_throttle.spend(sum(s for s in sizes if isinstance(s, int)))
            if await _migrate(client, progress, head, batch):
                if parts:  # they are the target's now: the source's registry forgets them
                    await client.call("SREM", REGISTRY, *parts)
                if on_moved is not None:
                    on_moved(batch)
            found += len(batch)
            await keys_throttle.spend(len(batch))
        elapsed = max(time.monotonic() - started, 1e-6)
        progress.keys_per_sec = progress.moved / elapsed
        if isinstance(dbsize, int) and progress.scanned:
            share = progress.moved / max(progress.scanned, 1)
            progress.remaining_estimate = max(int(dbsize * share) - found, 0)
        if checkpoint is not None:
            checkpoint(progress, cursor)
        if cursor in (b"0", 0, "0"):
            return found
        await trio.lowlevel.checkpoint()


async def _migrate(client: NodeClient, progress: MoveProgress, head: list[object],
                   batch: list[bytes]) -> bool:
    """True when the whole batch has left the source (moved, or gone already)."""
    reply = (await client.pipeline([head + batch]))[0]
    if not isinstance(reply, CommandError):
        progress.moved += len(batch) if reply == b"OK" else 0
        return True
    if "IOERR" not in str(reply) and "timeout" not in str(reply).lower():
        raise reply
    # one of them is too big to move within the timeout: move one by one, report the ones
    # that still fail (they keep the migration from finishing; an operator must act)
    for key in batch:
        one = (await client.pipeline([head + [key]]))[0]
        if isinstance(one, CommandError):
            shown = key.decode(errors="replace")
            if shown not in progress.too_big:
                progress.too_big.append(shown)
                timeout = head[5].decode() if isinstance(head[5], bytes) else head[5]
                progress.message = (f"{len(progress.too_big)} key(s) could not be moved within "
                                    f"{timeout} ms: {', '.join(progress.too_big[:5])}")
                log.error("migration %d: %s", progress.id, progress.message)
            progress.errors += 1
        elif one == b"OK":
            progress.moved += 1
    return False
