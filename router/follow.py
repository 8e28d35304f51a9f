"""Library clients as participants in the topology store (``from_state_dir``).

Online rebalancing (docs/rebalancing.md) is safe only if every participant keeps three
promises, and a library client is a participant like a proxy worker:

- it routes by the stored topology, swapping its whole ``Routing`` when the epoch changes
  (placement codes and node indices of two epochs must never mix);
- it acknowledges an epoch only once nothing routed by an older one can still reach a node:
  the proxy's mover starts MIGRATing the keys of new moving arcs as soon as every live
  participant has acknowledged the epoch that made them moving, and a write routed by the
  older epoch would land on the source behind the mover's back;
- it heartbeats, and holds its registration as a lease: once no heartbeat has succeeded for
  the participant timeout, barriers no longer wait for it, so before serving another command
  it reloads the topology and registers again.

The first promise is kept by ``ClientCore.routing_for``; the other two here: ``Gate`` counts
a routing's requests in flight, ``Participation`` holds the store state both clients share,
and ``Follower`` is the blocking client's daemon thread. The trio client's task is
``router.trio_client.TrioFollower``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError

from rebalancer.store import (
    DEFAULT_PARTICIPANT_TIMEOUT,
    StateDirStore,
    StoreError,
    UnknownParticipant,
)
from rebalancer.topology import Topology

from .config import ProxyConfig, load_toml

if TYPE_CHECKING:
    from .client import Routing, ShardedClient

__all__ = [
    "FollowSettings",
    "Follower",
    "Gate",
    "LeaseError",
    "Participation",
    "open_state_dir",
]

log = logging.getLogger("ringleader.library")

#: As the proxy (rebalancer/manager.py): how often the store's epoch is read, and heartbeats.
POLL_INTERVAL = 0.2
HEARTBEAT_INTERVAL = 1.0


class LeaseError(RedisConnectionError):
    """The client may be serving a stale topology and could not reload it: its heartbeats
    lapsed for the participant timeout (so migration barriers stopped waiting for it) and
    reading the store or registering again failed. Nothing was sent; retry once the state
    directory is readable again. Also raised by a client used after ``close()``."""


@dataclass(frozen=True)
class FollowSettings:
    """How a client follows the store; the defaults match the proxy's."""

    poll_interval: float = POLL_INTERVAL
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    #: The store's liveness timeout: the same value the proxies use (10 s by default).
    participant_timeout: float = DEFAULT_PARTICIPANT_TIMEOUT
    participant_id: str | None = None

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.heartbeat_interval <= 0:
            raise ValueError("poll_interval and heartbeat_interval must be positive")
        if self.heartbeat_interval * 2 > self.participant_timeout:
            raise ValueError("heartbeat_interval must be at most half the participant timeout, "
                             "or a slow heartbeat makes the client look gone")

    @property
    def lease(self) -> float:
        """How long after its last successful heartbeat the client stops trusting its
        topology: the participant timeout less one heartbeat interval of margin, since the
        store stamps a heartbeat a little after the client sent it."""
        return self.participant_timeout - self.heartbeat_interval


def open_state_dir(path: str | os.PathLike[str] | None,
                   config: ProxyConfig | str | os.PathLike[str] | None = None,
                   db: int | None = None,
                   participant_timeout: float = DEFAULT_PARTICIPANT_TIMEOUT,
                   ) -> tuple[StateDirStore, Topology, ProxyConfig]:
    """The store, its current topology and the configuration a client serves it with.

    Nodes and placement come from the topology; ``config`` (a ``ProxyConfig`` or the
    proxy's TOML file) gives the rest: node credentials, database, timeouts, route options.
    """
    store = StateDirStore(path, timeout=participant_timeout, create=False)
    topology = store.load()
    if topology is None:
        raise StoreError(f"{store.path} holds no topology yet: start a proxy with this state "
                         "directory first (ringleader serve --state-dir), or build the client "
                         "from the node list")
    if isinstance(config, str | os.PathLike):
        config = load_toml(Path(config))
    return store, topology, config_for_topology(topology, config, db)


def config_for_topology(topology: Topology, base: ProxyConfig | None = None,
                        db: int | None = None) -> ProxyConfig:
    """``base`` (or the defaults) with the topology's nodes and placement settings. The
    library reaches a Sentinel-managed shard at its stored primary, so the Sentinel names
    are dropped rather than requiring the Sentinel addresses."""
    nodes = tuple(replace(n, sentinel_master=None) for n in topology.nodes())
    settings: dict[str, Any] = {"nodes": nodes, "hash": topology.hash,
                                "distribution": topology.distribution,
                                "hash_tag": topology.hash_tag}
    if db is not None:
        settings["node_db"] = db
    if base is None:
        return ProxyConfig(**settings)
    return replace(base, **settings)


def default_participant_id() -> str:
    return f"library:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Gate:
    """Requests in flight on one routing. Once the routing is replaced, ``retire`` refuses
    new entries and ``wait`` returns when the last request has left: from then on nothing
    the old epoch routed can reach a node, and the new epoch may be acknowledged."""

    __slots__ = ("_lock", "_active", "_retired", "_drained")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._retired = False
        self._drained = threading.Event()

    def enter(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._retired and not self._active:
                self._drained.set()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            if not self._active:
                self._drained.set()

    def wait(self, timeout: float) -> bool:
        return self._drained.wait(timeout)


class Participation:
    """A client's registration in the store and the topology it has applied: the I/O-free
    bookkeeping and the (blocking) store calls both followers share; the trio follower runs
    the store calls in a thread."""

    def __init__(self, store: StateDirStore, topology: Topology, settings: FollowSettings,
                 client_kind: str) -> None:
        self.store = store
        self.settings = settings
        self.id = settings.participant_id or default_participant_id()
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "client": client_kind}
        #: The epoch acknowledged: every request is routed by it or a newer one.
        self.topology = topology
        self.lease = settings.lease
        #: monotonic time at which the last successful register/heartbeat was *sent*
        self.last_beat = -math.inf
        self.closed = False
        #: gates of replaced routings whose requests may still be in flight
        self.undrained: list[Any] = []

        #: epochs whose barrier has been seen to pass (keys of their moving arcs may move)
        self.barriers_passed: set[int] = set()

    @property
    def applied_epoch(self) -> int:
        return self.topology.epoch

    def barrier_passed_sync(self, epoch: int) -> bool:
        """Whether every live participant routes ``epoch``'s moving arcs with
        move-then-serve: until then no key may leave a source, since a participant still on
        the previous epoch reads and writes the source directly."""
        if epoch in self.barriers_passed:
            return True
        if self.store.all_acked(epoch):
            self.barriers_passed.add(epoch)
            return True
        return False

    def lease_expired(self) -> bool:
        return time.monotonic() - self.last_beat >= self.lease

    def beat_due(self) -> bool:
        return time.monotonic() - self.last_beat >= self.settings.heartbeat_interval

    def register_sync(self) -> int | None:
        """Register acknowledging the applied epoch; returns the store's epoch, which the
        caller compares: a migration barrier may have passed just before this registration
        counted, so a newer epoch must be applied before anything is served."""
        started = time.monotonic()
        self.store.register(self.id, "library", self.info, self.topology.epoch)
        self.last_beat = started
        return self.store.epoch()

    def heartbeat_sync(self) -> int | None:
        """Acknowledge the applied epoch; ``UnknownParticipant`` when the store pruned us."""
        started = time.monotonic()
        current = self.store.heartbeat(self.id, self.topology.epoch)
        self.last_beat = started
        return current

    def beat_while_draining(self) -> None:
        """Heartbeat (still acknowledging the old epoch) so a long drain does not look like
        a departure; failures only postpone it."""
        if not self.beat_due():
            return
        try:
            try:
                self.heartbeat_sync()
            except UnknownParticipant:
                self.store.register(self.id, "library", self.info, self.topology.epoch)
        except Exception as exc:
            log.debug("library client %s: heartbeat failed: %s", self.id, exc)

    def load_sync(self) -> Topology:
        topology = self.store.load()
        if topology is None:
            raise StoreError(f"{self.store.path}: the topology disappeared")
        return topology

    def unregister_sync(self) -> None:
        with contextlib.suppress(OSError):
            self.store.unregister(self.id)

    def lease_error(self, exc: BaseException) -> LeaseError:
        return LeaseError(f"library client {self.id}: no heartbeat reached {self.store.path} "
                          f"for {self.lease:g}s, so migrations stopped waiting for it, and "
                          f"reloading the topology failed ({exc}); not serving with a topology "
                          "that may be stale")


class Follower(Participation):
    """The blocking client's participation: a daemon thread polls the store's epoch every
    ``poll_interval``, swaps the routing when it changes, acknowledges once the old routing
    has drained, and heartbeats. Commands renew a lapsed lease themselves (``enter``).

    The thread holds the client weakly, so a client dropped without ``close()`` is still
    collected (and its ``__del__`` stops the thread)."""

    def __init__(self, client: ShardedClient, store: StateDirStore, topology: Topology,
                 settings: FollowSettings) -> None:
        super().__init__(store, topology, settings, type(client).__name__)
        self._client = weakref.ref(client)
        self._lock = threading.Lock()  # one swap/registration at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ringleader follow {self.id}",
                                        daemon=True)

    def start(self, client: ShardedClient) -> None:
        """Register with the epoch the client routes by, then follow."""
        client._core.routing.gate = Gate()
        with self._lock:
            self._register(client)
        client._follow = self
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and leave the store (barriers stop waiting for this client)."""
        if self.closed:
            return
        self.closed = True
        self.last_beat = -math.inf  # a command after close() finds the lease gone: LeaseError
        self._stop.set()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()
        self.unregister_sync()

    # ------------------------------------------------------------------ per command

    def enter(self, client: ShardedClient) -> Routing:
        """The routing a command uses, counted in its gate until ``gate.leave()``."""
        if time.monotonic() - self.last_beat >= self.lease:
            self._renew(client)
        core = client._core
        while True:
            routing = core.routing
            if routing.gate.enter():
                return routing

    def _renew(self, client: ShardedClient) -> None:
        with self._lock:
            if self.closed:
                raise LeaseError(f"library client {self.id} is closed; create a new one")
            if not self.lease_expired():
                return  # another thread renewed it meanwhile
            log.warning("library client %s: no heartbeat for %.1fs; reloading the topology",
                        self.id, time.monotonic() - self.last_beat)
            try:
                self._apply(client, self.load_sync())
                self._register(client)
            except (OSError, StoreError, ValueError) as exc:
                raise self.lease_error(exc) from exc

    def _register(self, client: ShardedClient) -> None:
        """Register, then make sure no newer epoch was written meanwhile."""
        while True:
            current = self.register_sync()
            if current is None or current == self.topology.epoch:
                return
            self._apply(client, self.load_sync())

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.wait(self.settings.poll_interval):
            client = self._client()
            if client is None:
                return
            try:
                with self._lock:
                    if not self._stop.is_set():
                        self._step(client)
            except Exception as exc:  # the store is unreadable for now: keep trying
                log.warning("library client %s: following %s failed: %s", self.id,
                            self.store.path, exc)
            del client

    def _step(self, client: ShardedClient) -> None:
        try:
            epoch = self.store.epoch()
            if epoch is not None and epoch != self.topology.epoch:
                self._apply(client, self.load_sync())
                self.heartbeat_sync()  # acknowledge at once: a barrier may be waiting
            elif self.beat_due():
                self.heartbeat_sync()
        except UnknownParticipant:
            # pruned as gone: barriers stopped counting this client, so commands wait for
            # the reload and the new registration
            self.last_beat = -math.inf
            self._apply(client, self.load_sync())
            self._register(client)

    def _apply(self, client: ShardedClient, topology: Topology) -> None:
        """Swap to ``topology``'s routing and wait until every replaced routing has drained;
        only then is it the applied (acknowledgeable) epoch."""
        core = client._core
        if topology.epoch != core.routing.epoch:
            log.info("library client %s: topology epoch %d (%d shards, %d migrations)",
                     self.id, topology.epoch, len(topology.shards), len(topology.migrations))
            new = core.routing_for(topology)
            new.gate = Gate()
            client._attach(new)
            old, core.routing = core.routing, new
            old.gate.retire()
            self.undrained.append(old.gate)
        while self.undrained:  # also those an interrupted swap left behind
            if self.undrained[0].wait(0.05):
                self.undrained.pop(0)
            else:
                self.beat_while_draining()
        self.topology = topology
        client._retire_pools(core.routing)
