"""Move-then-serve's shortcut, without sockets: which requests for a moving arc's keys pay
the MIGRATE on the source first, and which go straight to the target."""

from __future__ import annotations

from backends.migrating import MigratingLink, MoveState
from router import resp
from router.nodes import NodeSpec


class Recorder:
    """Stands for a node connection: keeps what was submitted, in order."""

    proto = 2
    poller = None

    def __init__(self, name: str) -> None:
        self.address = name
        self.sent: list[tuple[bytes, object]] = []

    def submit(self, payload: bytes, entry) -> None:
        self.sent.append((payload, entry))
        return None

    def submit_many(self, payloads: list[bytes], entries: list) -> None:
        self.sent.extend(zip(payloads, entries, strict=True))
        return None


class Entry:
    def __init__(self) -> None:
        self.reply = None

    def fill(self, raw: bytes):
        self.reply = raw


def link(state: MoveState | None = None) -> tuple[MigratingLink, Recorder, Recorder]:
    source, target = Recorder("source"), Recorder("target")
    node = NodeSpec("127.0.0.1", 7002)
    moving = MigratingLink(1, source, target, node, lambda args: [args[1]], timeout_ms=100,
                           moves=state)
    moving.ready = True
    return moving, source, target


def get(key: bytes) -> bytes:
    return resp.pack_command((b"GET", key))


def test_a_key_not_known_moved_is_migrated_first_then_served_by_the_target():
    moving, source, target = link()
    moving.submit(get(b"k"), Entry())
    (migrate, then), = source.sent
    assert migrate.startswith(b"*") and b"MIGRATE" in migrate and migrate.endswith(b"$1\r\nk\r\n")
    assert target.sent == []
    then.fill(resp.OK)
    assert [p for p, _ in target.sent] == [get(b"k")]


def test_once_moved_a_key_goes_straight_to_the_target():
    moving, source, target = link()
    moving.submit(get(b"k"), Entry())
    source.sent[0][1].fill(b"+NOKEY\r\n")  # gone from the source: it lives on the target now
    moving.submit(get(b"k"), Entry())
    assert len(source.sent) == 1 and len(target.sent) == 2


def test_a_request_behind_a_move_in_flight_follows_it_in_order():
    moving, source, target = link()
    moving.moves.moved([b"k"])
    moving.submit(get(b"other"), Entry())
    moving.moves.started([b"k"])  # another link of the migration is moving k right now
    moving.submit(get(b"k"), Entry())
    assert len(source.sent) == 2 and target.sent == []  # not ahead of the move in flight


def test_keys_the_mover_reports_skip_the_move_for_every_link_of_the_migration():
    state = MoveState()
    first, first_source, first_target = link(state)
    second, second_source, second_target = link(state)
    state.moved([b"a", b"b"])
    first.submit(get(b"a"), Entry())
    second.submit(get(b"b"), Entry())
    assert first_source.sent == [] and second_source.sent == []
    assert len(first_target.sent) == 1 and len(second_target.sent) == 1


def test_a_failed_move_is_not_remembered_and_the_client_gets_tryagain():
    moving, source, target = link()
    entry = Entry()
    moving.submit(get(b"k"), entry)
    source.sent[0][1].fill(b"-IOERR error or timeout\r\n")
    assert entry.reply.startswith(b"-TRYAGAIN")
    assert not moving.moves.on_target and not moving.moves.inflight
    moving.submit(get(b"k"), Entry())
    assert len(source.sent) == 2  # moved again, not assumed


def reading(moving: MigratingLink) -> MigratingLink:
    moving.reads_in_place = lambda args: args[0] == b"GET"
    return moving


def exec_reply(present: int, reply: bytes) -> bytes:
    return resp.array_of_raw([resp.integer(present), reply])


def test_a_read_runs_on_the_source_while_its_key_is_still_there():
    moving, source, target = link()
    entry = Entry()
    reading(moving).submit(get(b"k"), entry)
    payloads = [p for p, _ in source.sent]
    assert payloads == [resp.pack_command((b"MULTI",)), resp.pack_command((b"EXISTS", b"k")),
                        get(b"k"), resp.pack_command((b"EXEC",))]
    for _, queued in source.sent[:3]:
        queued.fill(b"+QUEUED\r\n")
    source.sent[3][1].fill(exec_reply(1, resp.bulk(b"v")))
    assert entry.reply == resp.bulk(b"v") and target.sent == []  # nothing moved


def test_a_read_of_a_key_gone_from_the_source_runs_on_the_target():
    moving, source, target = link()
    reading(moving).submit(get(b"k"), Entry())
    source.sent[3][1].fill(exec_reply(0, resp.NULL2))
    assert [p for p, _ in target.sent] == [get(b"k")]
    assert b"k" in moving.moves.on_target and not moving.moves.inflight


def test_a_write_still_moves_its_key_first():
    moving, source, target = link()
    reading(moving).submit(resp.pack_command((b"SET", b"k", b"v")), Entry())
    (migrate, _), = source.sent
    assert b"MIGRATE" in migrate


def test_a_failed_read_in_place_tells_the_client_the_command_did_not_run():
    moving, source, target = link()
    entry = Entry()
    reading(moving).submit(get(b"k"), entry)
    source.sent[3][1].fill(b"-ERR ringleader: node 127.0.0.1:7001 is down\r\n")
    assert entry.reply.startswith(b"-ERR ringleader: node") and not moving.moves.inflight


def test_a_read_of_keys_partly_moved_moves_the_rest_then_runs_on_the_target():
    moving, source, target = link()
    moving.find_keys = lambda args: args[1:]
    moving.reads_in_place = lambda args: True
    moving.submit(resp.pack_command((b"MGET", b"a", b"b")), Entry())
    source.sent[3][1].fill(exec_reply(1, resp.array_of_raw([resp.bulk(b"1"), resp.NULL2])))
    migrate, then = source.sent[4]
    assert b"MIGRATE" in migrate and migrate.endswith(b"$1\r\na\r\n$1\r\nb\r\n")
    assert moving.moves.inflight == {b"a": 1, b"b": 1}  # still moving: later requests follow
    then.fill(resp.OK)
    assert len(target.sent) == 1 and not moving.moves.inflight
