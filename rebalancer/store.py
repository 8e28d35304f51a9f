"""Where the topology lives between processes: a small store interface and a state directory.

Every participant (proxy worker, library client, migration engine) reads the topology from
the store, acknowledges the epochs it has applied, and heartbeats so the others know it is
alive. An edit is a compare-and-set on the epoch, so two admins (or two proxies) can never
both turn epoch ``e`` into two different ``e + 1``. The interface is kept small so an
etcd-backed store (a key with a mod-revision CAS, leases for participants) can follow.

The state directory holds::

    lock                 flock'ed around every read-compare-write and journal append
    topology.bin         header (magic, epoch, crc32) + Topology.to_bytes()
    journal.jsonl        append-only JSON lines: migration checkpoints, fsynced
    participants/*.json  one file per participant: kind, info, acked epoch, last heartbeat

Every file is replaced whole (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves the old content or the new, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from .topology import Topology, TopologyError

__all__ = [
    "DEFAULT_PARTICIPANT_TIMEOUT",
    "Participant",
    "StateDirStore",
    "StoreError",
    "TopologyStore",
    "UnknownParticipant",
    "default_state_dir",
    "participant_id_from_filename",
]

#: A participant whose last heartbeat is older than this (seconds) is gone.
DEFAULT_PARTICIPANT_TIMEOUT = 10.0

TOPOLOGY_FILE = "topology.bin"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = "lock"
PARTICIPANTS_DIR = "participants"

_MAGIC = b"RLTOPO"
_HEADER = struct.Struct(">6sHQI")  # magic, header version, epoch, crc32 of the body
_HEADER_VERSION = 1
#: Participant temp files older than this are leftovers of a crash (their writer held no lock).
_STALE_TEMP_SECONDS = 3600.0


class StoreError(RuntimeError):
    """The state cannot be read or written as it should (a corrupt file, a bad directory)."""


class UnknownParticipant(LookupError):
    """A heartbeat from a participant that is not registered (or was pruned as gone): it
    must re-read the topology and register again before it serves."""


@dataclass(frozen=True)
class Participant:
    """One registered participant as the store last heard from it."""

    id: str
    kind: str
    info: dict[str, Any] = field(default_factory=dict)
    acked_epoch: int = 0
    heartbeat: float = 0.0
    registered: float = 0.0
    #: Its heartbeat is within the timeout used for this listing.
    alive: bool = True


@runtime_checkable
class TopologyStore(Protocol):
    """What the proxy, the library client and the migration engine need from a store."""

    def load(self) -> Topology | None: ...

    def epoch(self) -> int | None: ...

    def changed_since(self, epoch: int | None) -> Topology | None: ...

    def compare_and_set(self, expected_epoch: int | None, new: Topology) -> bool: ...

    def journal_append(self, event: Mapping[str, Any]) -> None: ...

    def journal(self, migration_id: int | None = None) -> list[dict[str, Any]]: ...

    def register(self, participant_id: str, kind: str, info: Mapping[str, Any]) -> None: ...

    def heartbeat(self, participant_id: str, acked_epoch: int,
                  now: float | None = None) -> int | None: ...

    def unregister(self, participant_id: str) -> None: ...

    def participants(self, now: float | None = None,
                     timeout: float | None = None) -> list[Participant]: ...

    def all_acked(self, epoch: int, now: float | None = None,
                  timeout: float | None = None) -> bool: ...


def default_state_dir() -> Path:
    """``$RINGLEADER_STATE_DIR``, else ``$XDG_STATE_HOME/ringleader``, else
    ``~/.local/state/ringleader`` (the XDG default for state that survives restarts)."""
    explicit = os.environ.get("RINGLEADER_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "ringleader"


class StateDirStore:
    """A ``TopologyStore`` in a local directory, shared by every process on one host.

    ``timeout`` is the default participant liveness timeout; ``clock`` (wall-clock seconds,
    shared between processes) can be replaced in tests.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 timeout: float = DEFAULT_PARTICIPANT_TIMEOUT,
                 clock: Callable[[], float] = time.time, create: bool = True) -> None:
        self.path = Path(path) if path is not None else default_state_dir()
        self.timeout = timeout
        self.clock = clock
        if create:
            (self.path / PARTICIPANTS_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not self.path.is_dir():
            raise StoreError(f"state directory {self.path} does not exist")
        self._cached: tuple[int, int, Topology] | None = None  # (epoch, crc, value)

    def __repr__(self) -> str:
        return f"StateDirStore({str(self.path)!r})"

    # the topology ---------------------------------------------------------------------------

    def load(self) -> Topology | None:
        """The current topology, or None before the first ``compare_and_set``.

        A damaged file is an error, not None: treating it as absent would let a caller create
        epoch 1 over a cluster whose arcs have moved.
        """
        try:
            f = open(self.path / TOPOLOGY_FILE, "rb")
        except FileNotFoundError:
            return None
        with f:
            epoch, crc = self._parse_header(f.read(_HEADER.size))
            cached = self._cached
            if cached is not None and cached[0] == epoch and cached[1] == crc:
                return cached[2]
            body = f.read()
        if zlib.crc32(body) != crc:
            raise StoreError(f"{self.path / TOPOLOGY_FILE}: checksum mismatch (damaged file)")
        try:
            topology = Topology.from_bytes(body)
        except (TopologyError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.path / TOPOLOGY_FILE}: {exc}") from None
        if topology.epoch != epoch:
            raise StoreError(f"{self.path / TOPOLOGY_FILE}: header and body epochs differ")
        self._cached = (epoch, crc, topology)
        return topology

    def epoch(self) -> int | None:
        """The stored epoch, reading only the file's header: cheap enough to poll."""
        try:
            with open(self.path / TOPOLOGY_FILE, "rb") as f:
                return self._parse_header(f.read(_HEADER.size))[0]
        except FileNotFoundError:
            return None

    def changed_since(self, epoch: int | None) -> Topology | None:
        """The topology when its epoch is above ``epoch`` (or any topology when ``epoch`` is
        None), else None: one cheap header read in the common case of no change."""
        current = self.epoch()
        if current is None or (epoch is not None and current <= epoch):
            return None
        return self.load()

    def compare_and_set(self, expected_epoch: int | None, new: Topology) -> bool:
        """Store ``new`` if the stored epoch is still ``expected_epoch`` (None: nothing stored
        yet). False when another writer got there first: reload, re-plan, retry.

        The lock is held across the read, the compare and the write, so of two processes
        racing from the same epoch exactly one wins.
        """
        if expected_epoch is not None and new.epoch <= expected_epoch:
            raise ValueError(f"new epoch {new.epoch} must be above the expected {expected_epoch}")
        body = new.to_bytes()
        data = _HEADER.pack(_MAGIC, _HEADER_VERSION, new.epoch, zlib.crc32(body)) + body
        with self._locked():
            if self.epoch() != expected_epoch:
                return False
            self._remove_temp_files(TOPOLOGY_FILE)
            self._write_atomic(self.path / TOPOLOGY_FILE, data, durable=True)
        return True

    def load_or_create(self, initial: Topology) -> Topology:
        """The stored topology, or ``initial`` stored as the first one: how a proxy starts, so
        a restart with the same directory serves the current topology, not its config."""
        current = self.load()
        if current is not None:
            return current
        if self.compare_and_set(None, initial):
            return initial
        current = self.load()
        if current is None:  # pragma: no cover - someone created and deleted it meanwhile
            raise StoreError(f"{self.path}: topology vanished while being created")
        return current

    # the journal ----------------------------------------------------------------------------

    def journal_append(self, event: Mapping[str, Any]) -> None:
        """Append one event (JSON-serializable; a migration's events carry ``"migration": id``)
        and fsync it before returning, so a checkpoint the engine acted on survives a crash."""
        line = json.dumps(dict(event), separators=(",", ":"), sort_keys=True).encode() + b"\n"
        path = self.path / JOURNAL_FILE
        with self._locked():
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a crash tore the last line: start a fresh one
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path)

    def journal(self, migration_id: int | None = None) -> list[dict[str, Any]]:
        """Events in append order, all of them or one migration's. A line torn by a crash is
        skipped (its append never returned, so nobody acted on it)."""
        try:
            data = (self.path / JOURNAL_FILE).read_bytes()
        except FileNotFoundError:
            return []
        events = []
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if migration_id is None or event.get("migration") == migration_id:
                events.append(event)
        return events

    def last_event(self, migration_id: int, kind: str | None = None) -> dict[str, Any] | None:
        """The latest event of a migration (of ``kind`` if given): where to resume from."""
        for event in reversed(self.journal(migration_id)):
            if kind is None or event.get("kind") == kind:
                return event
        return None

    def journal_compact(self, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite the journal with only the events ``keep`` accepts (e.g. drop the progress
        of finished migrations, keep their final record); returns how many were dropped."""
        path = self.path / JOURNAL_FILE
        with self._locked():
            events = self.journal()
            kept = [e for e in events if keep(e)]
            if len(kept) == len(events):
                return 0
            self._remove_temp_files(JOURNAL_FILE)
            data = b"".join(json.dumps(e, separators=(",", ":"), sort_keys=True).encode() + b"\n"
                            for e in kept)
            self._write_atomic(path, data, durable=True)
        return len(events) - len(kept)

    # participants ---------------------------------------------------------------------------

    def register(self, participant_id: str, kind: str, info: Mapping[str, Any],
                 acked_epoch: int = 0, now: float | None = None) -> None:
        """Announce a participant (``kind`` such as "proxy-worker", "library", "engine").

        Until it heartbeats an ``acked_epoch`` it holds back every barrier, so register after
        loading the topology and pass the epoch applied."""
        now = self.clock() if now is None else now
        record = {"id": participant_id, "kind": kind, "info": dict(info),
                  "acked_epoch": acked_epoch, "heartbeat": now, "registered": now}
        self._write_atomic(self._participant_path(participant_id), _json_bytes(record),
                           durable=True)

    def heartbeat(self, participant_id: str, acked_epoch: int,
                  now: float | None = None) -> int | None:
        """Record that the participant is alive and has applied ``acked_epoch``; returns the
        store's current epoch so the caller learns in the same call whether it is behind.

        Raises ``UnknownParticipant`` if it was never registered or was pruned as gone: it
        was not counted by barriers meanwhile, so it must reload the topology before serving.
        Heartbeats are not fsynced: liveness does not need to survive a power cut.
        """
        now = self.clock() if now is None else now
        path = self._participant_path(participant_id)
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UnknownParticipant(f"participant {participant_id!r} is not registered") from None
        record["acked_epoch"] = acked_epoch
        record["heartbeat"] = now
        self._write_atomic(path, _json_bytes(record), durable=False)
        return self.epoch()

    def unregister(self, participant_id: str) -> None:
        """Leave cleanly: barriers stop waiting for this participant at once."""
        with contextlib.suppress(FileNotFoundError):
            self._participant_path(participant_id).unlink()

    def participants(self, now: float | None = None,
                     timeout: float | None = None) -> list[Participant]:
        """Every registered participant, sorted by id, with ``alive`` set from its heartbeat
        age; gone ones are listed (``alive=False``) until ``prune`` removes them."""
        now = self.clock() if now is None else now
        timeout = self.timeout if timeout is None else timeout
        out = []
        for path in sorted((self.path / PARTICIPANTS_DIR).glob("p_*.json")):
            try:
                record = json.loads(path.read_bytes())
            except (FileNotFoundError, ValueError):
                continue
            out.append(Participant(
                id=record["id"], kind=record["kind"], info=record.get("info", {}),
                acked_epoch=record["acked_epoch"], heartbeat=record["heartbeat"],
                registered=record.get("registered", record["heartbeat"]),
                alive=now - record["heartbeat"] <= timeout))
        out.sort(key=lambda p: p.id)
        return out

    def pending(self, epoch: int, now: float | None = None,
                timeout: float | None = None) -> list[Participant]:
        """The live participants that have not acknowledged ``epoch`` yet (what a barrier is
        waiting for; the admin status shows them)."""
        return [p for p in self.participants(now, timeout) if p.alive and p.acked_epoch < epoch]

    def all_acked(self, epoch: int, now: float | None = None,
                  timeout: float | None = None) -> bool:
        """The migration barrier: every live participant has applied ``epoch`` or later.

        True when no participant is live: nobody can be serving from an older topology
        (a participant whose heartbeat lapsed must reload before it serves again).
        """
        return not self.pending(epoch, now, timeout)

    def prune(self, now: float | None = None, timeout: float | None = None) -> list[str]:
        """Forget participants that are gone (and temp files crashed writers left); returns
        the ids removed. A pruned participant's next heartbeat raises ``UnknownParticipant``."""
        now = self.clock() if now is None else now
        removed = []
        for participant in self.participants(now, timeout):
            if not participant.alive:
                self.unregister(participant.id)
                removed.append(participant.id)
        for temp in (self.path / PARTICIPANTS_DIR).glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - temp.stat().st_mtime > _STALE_TEMP_SECONDS:
                    temp.unlink()
        return removed

    # files ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on the lock file. Each call opens its own descriptor, so the
        lock also excludes other threads of this process, not only other processes."""
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def _parse_header(self, header: bytes) -> tuple[int, int]:
        if len(header) != _HEADER.size:
            raise StoreError(f"{self.path / TOPOLOGY_FILE}: truncated header")
        magic, version, epoch, crc = _HEADER.unpack(header)
        if magic != _MAGIC or version != _HEADER_VERSION:
            raise StoreError(f"{self.path / TOPOLOGY_FILE}: not a ringleader topology file "
                             f"(or a newer format, header version {version})")
        return epoch, crc

    def _participant_path(self, participant_id: str) -> Path:
        if not participant_id:
            raise ValueError("a participant needs a non-empty id")
        return self.path / PARTICIPANTS_DIR / f"p_{quote(participant_id, safe='')}.json"

    def _remove_temp_files(self, name: str) -> None:
        """Temp files of ``name`` left by a writer that crashed (called under the lock, when
        no other writer of ``name`` can be mid-write)."""
        for temp in self.path.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    @staticmethod
    def _write_atomic(path: Path, data: bytes, durable: bool) -> None:
        """Temp file in the same directory, fsync, rename over ``path``, fsync the directory:
        a reader (or a crash) sees the old content or the new, never part of either."""
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                _write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        if durable:
            _fsync_dir(path.parent)


def participant_id_from_filename(name: str) -> str:
    """The participant id a ``participants/`` file name stands for (for tools that list the
    directory)."""
    if not (name.startswith("p_") and name.endswith(".json")):
        raise ValueError(f"{name!r} is not a participant file")
    return unquote(name[2:-5])


def _json_bytes(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # pragma: no cover - some filesystems refuse directory fsync
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
