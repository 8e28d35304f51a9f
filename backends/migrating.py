"""Move-then-serve for keys in arcs that are moving between nodes.

While an arc migrates, its keys live on the source until moved and on the target after. A
request for such a key first runs ``MIGRATE target port "" db timeout REPLACE KEYS k...`` on
the source (atomic there: the keys move, or ``NOKEY`` if they are not on the source any
more), and only then runs on the target. Every participant follows the rule, so each key has
one writer at every moment, and the background mover can move the same keys concurrently
(MIGRATE of an absent key is a harmless NOKEY).

Once a key is known to be on the target (this process moved it, on access or with its
mover, or a move found it gone from the source), later requests for it go straight to the
target, skipping the MIGRATE round trip, unless a move of that key is still in flight (the
request then follows it, so one client's requests for a key keep their order). No
participant writes a moving arc's key on the source after the barrier, so a key that left
the source does not come back while the migration lasts.

A read moves nothing: it runs on the source inside ``MULTI; EXISTS keys; <read>; EXEC``,
and its answer stands when all its keys were still there (the source is authoritative for
them until they move); when none was, it runs on the target (a key gone from the source is
on the target, or nowhere); in between, its keys are moved first like a write's. A MIGRATE
blocks the source for a round trip to the target, so reads that skip it keep a moving
arc's source (and everything else on it) responsive. Writes always move first: deleting
the key on the source and writing it on the target would lose it if the target then
failed the write.

A ``MigratingLink`` stands in the connection list at the migration's negative placement code
(``conns[-(k + 1)]``), so routes address it like any node and need no special case.

Until the epoch barrier has passed (every live participant routes the arc this way), the
link *holds* its requests instead of moving keys: a participant still on the previous epoch
reads and writes the source directly, so no key may leave the source while one might. Held
requests go on (moved, then served) as soon as the barrier is seen to pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import hiredis

from router import resp
from router.nodes import NodeSpec

from .slots import Discard

log = logging.getLogger("ringleader.migrating")


def migrate_head(target: NodeSpec, *, db: int, timeout_ms: int, username: str | None = None,
                 password: str | None = None) -> list[bytes]:
    """``MIGRATE host port "" db timeout [AUTH...] REPLACE KEYS``: the keys follow. One
    definition for the proxy's move-then-serve, its mover and the library client."""
    head = [b"MIGRATE", target.host.encode(), b"%d" % target.port, b"", b"%d" % db,
            b"%d" % timeout_ms]
    password = target.password or password
    username = target.username or username
    if password and username:
        head += [b"AUTH2", username.encode(), password.encode()]
    elif password:
        head += [b"AUTH", password.encode()]
    return head + [b"REPLACE", b"KEYS"]


class MoveState:
    """What this process knows about one migration's keys, shared by its links (one per
    protocol, rebuilt on every topology change) and told by its mover."""

    __slots__ = ("on_target", "inflight")

    #: Keys remembered as moved, at most (about 100 bytes each); past it, moves still work,
    #: later requests for the keys not remembered just pay the MIGRATE round trip.
    LIMIT = 500_000

    def __init__(self) -> None:
        self.on_target: set[bytes] = set()
        self.inflight: dict[bytes, int] = {}  # key -> moves on access not answered yet

    def moved(self, keys: list[bytes]) -> None:
        if len(self.on_target) < self.LIMIT:
            self.on_target.update(keys)

    def direct(self, keys: list[bytes]) -> bool:
        """Whether a request for ``keys`` may go straight to the target."""
        on_target = self.on_target
        inflight = self.inflight
        for key in keys:
            if key not in on_target or key in inflight:
                return False
        return True

    def started(self, keys: list[bytes]) -> None:
        inflight = self.inflight
        for key in keys:
            inflight[key] = inflight.get(key, 0) + 1

    def finished(self, keys: list[bytes]) -> None:
        inflight = self.inflight
        for key in keys:
            left = inflight[key] - 1
            if left:
                inflight[key] = left
            else:
                del inflight[key]


class MigratingLink:
    """Connection-like: ``submit`` moves the request's keys to the target, then sends it there."""

    state = "up"
    dedicated = False

    def __init__(self, migration_id: int, source, target, target_node: NodeSpec,
                 find_keys: Callable[[list[bytes]], list[bytes]], *, timeout_ms: int,
                 db: int = 0, username: str | None = None, password: str | None = None,
                 stats=None, moves: MoveState | None = None,
                 reads_in_place: Callable[[list[bytes]], bool] | None = None) -> None:
        self.migration_id = migration_id
        self.source = source
        self.target = target
        self.address = f"{source.address}->{target.address}"
        self.find_keys = find_keys
        self.stats = stats
        self.moves = moves if moves is not None else MoveState()
        #: whether a request is a read that may run where its keys are (None: move them all)
        self.reads_in_place = reads_in_place
        self._head = migrate_head(target_node, db=db, timeout_ms=timeout_ms,
                                  username=username, password=password)
        self.ready = False  # the barrier has passed: keys may move
        self._held: list[tuple] = []

    def release(self) -> None:
        """The barrier passed: send what was held, in order."""
        self.ready = True
        held, self._held = self._held, []
        for kind, payload, entry, extra in held:
            if kind == "acked":
                err = self.submit_acked(payload, entry, *extra)
                if err is not None:
                    extra[1].fill(err)
            else:
                err = self.submit(payload, entry)
            if err is not None:
                client = entry.fill(err)
                if client is not None and not client.dirty:
                    client.dirty = True
                    self.target.poller.client_dirty(client)

    def fail_held(self, reason: bytes) -> None:
        held, self._held = self._held, []
        for kind, _payload, entry, extra in held:
            if kind == "acked":
                extra[1].fill(reason)
            client = entry.fill(reason)
            if client is not None and not client.dirty:
                client.dirty = True
                self.target.poller.client_dirty(client)

    def handoff(self, resubmit) -> None:
        """This migration ended while requests were held: route them again by the current
        topology (``resubmit(kind, payload, entry, extra)``), where the arc now lives."""
        held, self._held = self._held, []
        for kind, payload, entry, extra in held:
            resubmit(kind, payload, entry, extra)

    def adopt(self, older: MigratingLink) -> None:
        """Take over an older link's state when the connection lists are rebuilt."""
        self.ready = older.ready
        self._held = older._held
        older._held = []

    @property
    def proto(self) -> int:
        return self.target.proto

    def submit(self, payload: bytes, entry) -> bytes | None:
        if not self.ready:
            self._held.append(("plain", payload, entry, ()))
            return None
        reader = hiredis.Reader()
        reader.feed(payload)
        args = reader.gets()
        keys = self.find_keys(args) if isinstance(args, list) else []
        if not keys:  # nothing to move (a channel name, say): the target serves it
            return self.target.submit(payload, entry)
        keys = list(dict.fromkeys(keys))
        state = self.moves
        if state.direct(keys):  # already moved, no move of them in flight
            return self.serve_on_target(payload, entry)
        if (self.reads_in_place is not None and type(entry) is not _Acked
                and self.reads_in_place(args)):
            exists = resp.pack_command((b"EXISTS", *keys))
            err = self.source.submit_many(
                [MULTI, exists, payload, EXEC],
                [_SKIP, _SKIP, _SKIP, _ReadWhereItIs(self, payload, entry, keys)])
        else:
            err = self.move_then_serve(payload, entry, keys)
        if err is None:
            state.started(keys)
        return err

    def serve_on_target(self, payload: bytes, entry) -> bytes | None:
        """Send a request whose keys are on the target (a write under an acknowledgement
        level is waited for there)."""
        if type(entry) is _Acked:
            return self.target.submit_acked(payload, entry.entry, entry.wait, entry.waiter)
        return self.target.submit(payload, entry)

    def move_then_serve(self, payload: bytes, entry, keys: list[bytes]) -> bytes | None:
        migrate = resp.pack_command(tuple(self._head + keys))
        return self.source.submit(migrate, _ThenTarget(self, payload, entry, keys))

    def submit_many(self, payloads: list[bytes], entries: list) -> bytes | None:
        for payload, entry in zip(payloads, entries, strict=True):
            err = self.submit(payload, entry)
            if err is not None:
                return err
        return None

    def submit_acked(self, payload: bytes, entry, wait: bytes, waiter) -> bytes | None:
        """A write under an acknowledgement level, in a moving arc: moved, then written and
        waited for on the target."""
        if not self.ready:
            self._held.append(("acked", payload, entry, (wait, waiter)))
            return None
        return self.submit(payload, _Acked(self.target, entry, wait, waiter))

    @property
    def outstanding(self) -> int:
        return 0


MULTI = resp.pack_command((b"MULTI",))
EXEC = resp.pack_command((b"EXEC",))


#: MULTI's +OK and the +QUEUED replies of a read run in place: dropped on arrival.
_SKIP = Discard()


class _Acked:
    """Stands for a write's entry until it reaches the target, where it is acknowledged."""

    __slots__ = ("target", "entry", "wait", "waiter")

    def __init__(self, target, entry, wait: bytes, waiter) -> None:
        self.target, self.entry, self.wait, self.waiter = target, entry, wait, waiter

    def fill(self, raw: bytes):  # only reached when the move itself failed
        self.waiter.fill(raw)
        return self.entry.fill(raw)


class _ThenTarget:
    """The MIGRATE's entry on the source: on success the request goes on to the target."""

    __slots__ = ("link", "payload", "entry", "keys")

    def __init__(self, link: MigratingLink, payload: bytes, entry, keys: list[bytes]) -> None:
        self.link = link
        self.payload = payload
        self.entry = entry
        self.keys = keys

    def on_target(self):
        """The keys are on the target: the request goes there (an error fills the entry; an
        acknowledged write's entry fills its waiter too)."""
        err = self.link.serve_on_target(self.payload, self.entry)
        return None if err is None else self.entry.fill(err)

    def fill(self, raw: bytes):
        link = self.link
        link.moves.finished(self.keys)
        if raw in (resp.OK, b"+NOKEY\r\n"):
            link.moves.moved(self.keys)
            if link.stats is not None and raw == resp.OK:
                link.stats.moved_on_access += len(self.keys)
            return self.on_target()
        if link.stats is not None:
            link.stats.errors += 1
        shown = ", ".join(k.decode(errors="replace")[:40] for k in self.keys[:3])
        log.warning("migration %d: moving %s on access failed: %r", link.migration_id, shown,
                    raw[:200])
        return self.entry.fill(resp.error(
            f"TRYAGAIN ringleader: could not move '{shown}' to its new node "
            f"({raw[1:-2].decode(errors='replace')[:200]}); the command did not run"))


class _ReadWhereItIs(_ThenTarget):
    """EXEC's reply to ``EXISTS keys; <read>`` on the source: the read's answer when every key
    was there, else the read goes to the target (none there) or moves its keys first (some)."""

    __slots__ = ()

    def fill(self, raw: bytes):
        link = self.link
        state = link.moves
        state.finished(self.keys)
        try:
            items = resp.split_reply_array(raw)
        except (resp.ProtocolError, ValueError):
            items = None
        present = resp.parse_integer(items[0]) if items is not None and len(items) == 2 else None
        if present is None:  # the transaction failed (the node went down, say)
            return self.entry.fill(raw if raw[:1] in (b"-", b"!") else resp.error(
                "TRYAGAIN ringleader: a read of a moving key failed; the command did not run"))
        if present == len(self.keys):
            return self.entry.fill(items[1])
        if present == 0:  # on the target, or nowhere: either way, the target answers
            state.moved(self.keys)
            return self.on_target()
        err = link.move_then_serve(self.payload, self.entry, self.keys)
        if err is not None:
            return self.entry.fill(err)
        state.started(self.keys)
        return None
