"""The state-directory store: compare-and-set under races, crash-safe writes, the journal,
participants and the migration barrier."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading

import pytest

from rebalancer.store import (
    JOURNAL_FILE,
    TOPOLOGY_FILE,
    StateDirStore,
    StoreError,
    TopologyStore,
    UnknownParticipant,
    default_state_dir,
    participant_id_from_filename,
)
from rebalancer.topology import Topology
from router.config import from_node_list


def topology(points: int = 16) -> Topology:
    return Topology.from_config(from_node_list("10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379",
                                               points_per_node=points))


def moved(base: Topology, n: int) -> Topology:
    """A distinct next epoch of ``base``: a split point that depends on ``n``."""
    return base.split([(base.epoch * 1000 + n) * 7919 + 12345])


# --- topology and compare-and-set ------------------------------------------------------------


def test_compare_and_set_from_nothing_then_by_epoch(tmp_path):
    store = StateDirStore(tmp_path / "state")
    assert isinstance(store, TopologyStore)
    assert store.load() is None and store.epoch() is None
    assert store.changed_since(None) is None
    first = topology()
    assert store.compare_and_set(None, first)
    assert not store.compare_and_set(None, first)
    assert store.load() == first and store.epoch() == 1
    second = moved(first, 0)
    assert not store.compare_and_set(5, replace_epoch(second, 6))
    assert store.compare_and_set(1, second)
    assert not store.compare_and_set(1, moved(first, 1))
    assert store.epoch() == 2 and store.load() == second
    assert store.changed_since(1) == second
    assert store.changed_since(2) is None
    assert store.changed_since(None) == second
    # Another store on the same directory sees the same state (another process would).
    assert StateDirStore(tmp_path / "state").load() == second
    with pytest.raises(ValueError, match="above"):
        store.compare_and_set(2, first)


def replace_epoch(value: Topology, epoch: int) -> Topology:
    from dataclasses import replace

    return replace(value, epoch=epoch)


def test_files_are_private(tmp_path):
    store = StateDirStore(tmp_path)
    store.compare_and_set(None, topology())
    store.journal_append({"migration": 1, "kind": "start"})
    store.register("w1", "proxy-worker", {})
    for path in (tmp_path / TOPOLOGY_FILE, tmp_path / JOURNAL_FILE,
                 next((tmp_path / "participants").iterdir())):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_or_create_keeps_the_stored_topology(tmp_path):
    store = StateDirStore(tmp_path)
    first = topology()
    assert store.load_or_create(first) == first
    second = moved(first, 0)
    store.compare_and_set(1, second)
    # A restart with the original config still serves what the store says.
    assert StateDirStore(tmp_path).load_or_create(first) == second


def test_only_one_of_many_threads_wins_each_compare_and_set(tmp_path):
    base = topology()
    StateDirStore(tmp_path).compare_and_set(None, base)
    current = base
    for _ in range(10):
        candidates = [moved(current, i) for i in range(8)]
        start = threading.Barrier(len(candidates))
        results: list[bool] = [False] * len(candidates)

        threads = [threading.Thread(target=_attempt,
                                    args=(tmp_path, current.epoch, candidates, i, start, results))
                   for i in range(len(candidates))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(True) == 1
        winner = candidates[results.index(True)]
        assert StateDirStore(tmp_path).load() == winner
        current = winner


def _attempt(path, expected: int, candidates: list[Topology], i: int,
             start: threading.Barrier, results: list[bool]) -> None:
    store = StateDirStore(path)
    start.wait()
    results[i] = store.compare_and_set(expected, candidates[i])


def _race(path: str, data: bytes, expected: int, start, results) -> None:
    store = StateDirStore(path)
    candidate = Topology.from_bytes(data)
    start.wait()
    results.put((candidate.to_bytes(), store.compare_and_set(expected, candidate)))


def test_only_one_of_several_processes_wins(tmp_path):
    base = topology()
    StateDirStore(tmp_path).compare_and_set(None, base)
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race,
                         args=(str(tmp_path), moved(base, i).to_bytes(), 1, start, results))
             for i in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(timeout=20)
    winners = [data for data, won in outcomes if won]
    assert len(winners) == 1
    assert StateDirStore(tmp_path).load() == Topology.from_bytes(winners[0])


def test_a_crash_before_the_rename_leaves_the_old_topology(tmp_path, monkeypatch):
    store = StateDirStore(tmp_path)
    first = topology()
    store.compare_and_set(None, first)
    # A writer killed after writing its temp file: the temp file is left, the topology is not.
    leftover = tmp_path / f".{TOPOLOGY_FILE}.4242.deadbeef.tmp"
    leftover.write_bytes(b"half a topo")
    assert StateDirStore(tmp_path).load() == first
    # The next write (under the lock, so no writer can be mid-write) sweeps it away.
    second = moved(first, 0)
    assert store.compare_and_set(1, second)
    assert list(tmp_path.glob(".*.tmp")) == []

    # A write that fails at the rename: old content stays, its temp file is removed.
    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        store.compare_and_set(2, moved(second, 0))
    monkeypatch.undo()
    assert StateDirStore(tmp_path).load() == second
    assert list(tmp_path.glob(".*.tmp")) == []


def test_a_damaged_topology_file_is_an_error_not_an_empty_store(tmp_path):
    store = StateDirStore(tmp_path)
    store.compare_and_set(None, topology())
    path = tmp_path / TOPOLOGY_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        StateDirStore(tmp_path).load()
    path.write_bytes(b"junk")
    with pytest.raises(StoreError):
        StateDirStore(tmp_path).epoch()


def test_load_reuses_the_parsed_value_until_the_epoch_changes(tmp_path):
    store = StateDirStore(tmp_path)
    first = topology()
    store.compare_and_set(None, first)
    a = store.load()
    assert store.load() is a
    store.compare_and_set(1, moved(first, 0))
    assert store.load() is not a and store.load().epoch == 2


# --- journal ---------------------------------------------------------------------------------


def test_journal_append_read_and_resume(tmp_path):
    store = StateDirStore(tmp_path)
    assert store.journal() == []
    store.journal_append({"migration": 3, "kind": "start", "arcs": 12})
    for n in range(1, 4):
        store.journal_append({"migration": 3, "kind": "progress", "scanned": n * 100,
                              "moved": n * 10, "cursor": str(n * 7)})
    store.journal_append({"migration": 4, "kind": "start"})
    assert [e["kind"] for e in store.journal()] == ["start", "progress", "progress",
                                                    "progress", "start"]
    assert len(store.journal(3)) == 4 and len(store.journal(4)) == 1
    # After a crash the engine resumes from its last checkpoint.
    resumed = StateDirStore(tmp_path).last_event(3, "progress")
    assert resumed == {"migration": 3, "kind": "progress", "scanned": 300, "moved": 30,
                       "cursor": "21"}
    assert store.last_event(4) == {"migration": 4, "kind": "start"}
    assert store.last_event(5) is None


def test_a_torn_journal_line_is_skipped_and_the_next_append_starts_clean(tmp_path):
    store = StateDirStore(tmp_path)
    store.journal_append({"migration": 1, "kind": "progress", "moved": 5})
    with open(tmp_path / JOURNAL_FILE, "ab") as f:
        f.write(b'{"migration":1,"kind":"progr')  # the process died mid-append
    assert store.journal(1) == [{"migration": 1, "kind": "progress", "moved": 5}]
    store.journal_append({"migration": 1, "kind": "progress", "moved": 9})
    assert store.last_event(1)["moved"] == 9
    assert len(store.journal()) == 2


def test_journal_compact(tmp_path):
    store = StateDirStore(tmp_path)
    for m in (1, 2):
        store.journal_append({"migration": m, "kind": "progress"})
        store.journal_append({"migration": m, "kind": "done" if m == 1 else "progress"})
    dropped = store.journal_compact(lambda e: e["migration"] != 1 or e["kind"] == "done")
    assert dropped == 1
    assert store.journal() == [{"migration": 1, "kind": "done"},
                               {"migration": 2, "kind": "progress"},
                               {"migration": 2, "kind": "progress"}]
    assert store.journal_compact(lambda e: True) == 0


def test_concurrent_appends_never_interleave(tmp_path):
    def writer(n: int) -> None:
        store = StateDirStore(tmp_path)
        for i in range(25):
            store.journal_append({"migration": n, "kind": "progress", "i": i, "pad": "x" * 500})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = StateDirStore(tmp_path)
    assert len(store.journal()) == 100
    for n in range(4):
        assert [e["i"] for e in store.journal(n)] == list(range(25))
    assert all(json.loads(line) for line in (tmp_path / JOURNAL_FILE).read_bytes().splitlines())


# --- participants and the barrier ------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_participants_liveness_and_the_barrier(tmp_path):
    clock = Clock()
    store = StateDirStore(tmp_path, timeout=5.0, clock=clock)
    store.compare_and_set(None, topology())
    store.register("proxy-1/worker-0", "proxy-worker", {"pid": 11}, acked_epoch=1)
    store.register("lib-a", "library", {"host": "app1"}, acked_epoch=1)
    assert store.all_acked(1) and not store.all_acked(2)

    clock.now += 2
    assert store.heartbeat("proxy-1/worker-0", 2) == 1  # tells the caller the store's epoch
    assert [p.id for p in store.pending(2)] == ["lib-a"]
    assert not store.all_acked(2)
    clock.now += 2
    store.heartbeat("lib-a", 2)
    assert store.all_acked(2)

    # The worker stops heartbeating: after the timeout it no longer holds the barrier back.
    clock.now += 2
    store.heartbeat("lib-a", 3)
    listing = {p.id: p for p in store.participants()}
    assert listing["proxy-1/worker-0"].alive  # last heard 4 s ago, timeout 5 s
    assert not store.all_acked(3)
    clock.now += 2
    listing = {p.id: p for p in store.participants()}
    assert not listing["proxy-1/worker-0"].alive and listing["lib-a"].alive
    assert listing["lib-a"].acked_epoch == 3 and listing["lib-a"].kind == "library"
    assert listing["lib-a"].info == {"host": "app1"} and listing["lib-a"].registered == 1000.0
    assert store.all_acked(3)
    assert not store.all_acked(3, timeout=60.0)  # a longer timeout still counts it

    # Pruned, a gone participant must register again before serving.
    assert store.prune() == ["proxy-1/worker-0"]
    with pytest.raises(UnknownParticipant):
        store.heartbeat("proxy-1/worker-0", 3)
    store.unregister("lib-a")
    store.unregister("lib-a")  # idempotent
    assert store.participants() == [] and store.all_acked(99)


def test_participant_ids_are_any_text(tmp_path):
    store = StateDirStore(tmp_path, clock=Clock())
    weird = "host:7000/worker 1/../..\u00e9"
    store.register(weird, "proxy-worker", {})
    assert [p.id for p in store.participants()] == [weird]
    (path,) = (tmp_path / "participants").iterdir()
    assert path.parent == tmp_path / "participants"
    assert participant_id_from_filename(path.name) == weird


def test_default_state_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RINGLEADER_STATE_DIR", str(tmp_path / "x"))
    assert default_state_dir() == tmp_path / "x"
    monkeypatch.delenv("RINGLEADER_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "ringleader"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "ringleader"


def test_a_missing_directory_is_created_or_refused(tmp_path):
    StateDirStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "participants").is_dir()
    with pytest.raises(StoreError):
        StateDirStore(tmp_path / "nope", create=False)
