"""``ringleader admin``: the exact RINGLEADER commands it sends, its tables, ``--json``,
``--wait`` and its exit codes, against a fake admin server speaking just enough RESP.

The fake runs in a thread on a loopback port and answers canned JSON documents, so these
tests pin the client side of the protocol without a proxy or any Redis node.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import REPO

from rebalancer import admin_cli
from rebalancer.admin_cli import (
    progress_line,
    render_hotkeys,
    render_migrations,
    render_plan,
    render_status,
    wait_for_migrations,
)
from router.cli import main as ringleader_main

HOST = "127.0.0.1"

# --- the fake admin server ---------------------------------------------------------------------


class Err(str):
    """A reply to send as a RESP error."""


class Drop:
    """A reply that closes the connection instead (a proxy dying mid-request)."""


Reply = dict | Err | Drop | str


def plan_doc(kind: str = "add-node", migrations: list[int] | None = None) -> dict:
    return {
        "plan": {
            "kind": kind, "base_epoch": 4, "split_points": [11, 22, 33],
            "added_shard": "127.0.0.1:7004" if kind == "add-node" else None,
            "remove_after": "127.0.0.1:7002" if kind == "remove-node" else None,
            "moves": [
                {"arcs": [100, 200], "source": "127.0.0.1:7001", "target": "127.0.0.1:7004",
                 "keys": 2276, "bytes": 0, "ops": 0.0, "share": 0.0769},
                {"arcs": [300], "source": "127.0.0.1:7002", "target": "127.0.0.1:7004",
                 "keys": 2503, "bytes": 0, "ops": 0.0, "share": 0.0814},
            ],
            "keys_moved": 4779, "bytes_moved": 0,
            "load_before": {"127.0.0.1:7001": {"keys": 10000, "ops": 0.0, "share": 0.5,
                                               "weight": 1},
                            "127.0.0.1:7002": {"keys": 10000, "ops": 0.0, "share": 0.5,
                                               "weight": 1}},
            "load_after": {"127.0.0.1:7001": {"keys": 7724, "ops": 0.0, "share": 0.4231,
                                              "weight": 1},
                           "127.0.0.1:7002": {"keys": 7497, "ops": 0.0, "share": 0.4186,
                                              "weight": 1},
                           "127.0.0.1:7004": {"keys": 4779, "ops": 0.0, "share": 0.1583,
                                              "weight": 1}},
            "reached_target": True, "target": None, "churn": None, "notes": [],
        },
        "migrations": [] if migrations is None else migrations,
    }


def migration(mid: int, state: str = "moving", moved: int = 0, remaining: int | None = 1000,
              **extra: Any) -> dict:
    record = {"id": mid, "source": "127.0.0.1:7001", "target": "127.0.0.1:7004", "arcs": 2,
              "state": state, "scanned": moved, "moved": moved, "remaining_estimate": remaining,
              "keys_per_sec": 500.0 if state == "moving" else 0.0, "started": 1000.0,
              "finished": 1010.0 if state in ("done", "failed", "cancelled") else None,
              "errors": 0, "too_big": [], "message": ""}
    record.update(extra)
    return record


STATUS = {
    "epoch": 7, "state_dir": "/var/lib/ringleader",
    "shards": [
        {"id": "127.0.0.1:7001", "address": "127.0.0.1:7001", "replicas": ["127.0.0.1:7101"],
         "state": "up", "keys": 12345, "ops_per_sec": 1234.5, "share": 0.5},
        {"id": "127.0.0.1:7002", "address": "127.0.0.1:7002", "replicas": [],
         "state": "down", "keys": None, "ops_per_sec": 0.0, "share": 0.5},
    ],
    "migrations": [migration(3, moved=250, remaining=750), migration(1, state="done",
                                                                     moved=900)],
    "participants": [{"id": "proxy:a:1:7000", "kind": "proxy", "acked_epoch": 7,
                      "alive": True},
                     {"id": "proxy:b:2:7000", "kind": "proxy", "acked_epoch": 6,
                      "alive": True}],
}

HOTKEYS = {"hotkeys": [{"key": "user:1", "ops_per_sec": 9000.0, "node": "127.0.0.1:7001",
                        "mitigation": "cache"},
                       {"key": "counter", "ops_per_sec": 12000.5, "node": "127.0.0.1:7002",
                        "mitigation": "split"}],
           "cache": {"entries": 2, "bytes": 2048, "hits": 300, "misses": 100,
                     "invalidations": 5, "stored": 7}, "enabled": True}


class FakeAdmin:
    """A loopback server answering ``RINGLEADER <SUB>`` with ``replies[SUB]`` (a document, or
    a function of the arguments returning one) and recording every command it receives."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.commands: list[list[str]] = []
        self.replies: dict[str, Reply | Callable[[list[str]], Reply]] = {
            "STATUS": STATUS, "MIGRATIONS": {"migrations": STATUS["migrations"]},
            "HOTKEYS": HOTKEYS,
            "ADD-NODE": lambda a: plan_doc("add-node", [] if "DRY-RUN" in a else [5, 6]),
            "REMOVE-NODE": lambda a: plan_doc("remove-node", [] if "DRY-RUN" in a else [7]),
            "REBALANCE": lambda a: plan_doc("rebalance", [] if "DRY-RUN" in a else [8]),
            "MOVE": lambda a: plan_doc("move", [] if "DRY-RUN" in a else [9]),
            "CANCEL": lambda a: {"cancelled": int(a[0])},
        }
        self._listener = socket.socket()
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self.address = f"{HOST}:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def ringleader_commands(self) -> list[list[str]]:
        """The RINGLEADER commands received, AUTH included, without the RINGLEADER word."""
        with self._lock:
            return [c[1:] for c in self.commands if c and c[0].upper() == "RINGLEADER"]

    def stop(self) -> None:
        self._stopping = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in self._threads:
            thread.join(5)
            assert not thread.is_alive()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        authed = False
        try:
            while True:
                command = _read_command(reader)
                if command is None:
                    return
                with self._lock:
                    self.commands.append(command)
                reply, authed = self._answer(command, authed)
                if isinstance(reply, Drop):
                    return
                conn.sendall(reply)
        except (OSError, ValueError):
            return
        finally:
            reader.close()
            conn.close()

    def _answer(self, command: list[str], authed: bool) -> tuple[bytes | Drop, bool]:
        if command[0].upper() != "RINGLEADER":
            return b"+OK\r\n", authed
        sub = command[1].upper() if len(command) > 1 else ""
        if sub == "AUTH":
            if self.password is None or command[2:] == [self.password]:
                return b"+OK\r\n", True
            return b"-WRONGPASS invalid admin password\r\n", authed
        if self.password is not None and not authed:
            return (b"-NOAUTH ringleader: admin commands need RINGLEADER AUTH <admin "
                    b"password> first\r\n", authed)
        handler = self.replies.get(sub)
        if handler is None:
            return f"-ERR ringleader: unknown admin command '{sub}'\r\n".encode(), authed
        reply = handler(command[2:]) if callable(handler) else handler
        if isinstance(reply, Drop):
            return reply, authed
        if isinstance(reply, Err):
            return f"-{reply}\r\n".encode(), authed
        body = (reply if isinstance(reply, str) else json.dumps(reply)).encode()
        return b"$%d\r\n%s\r\n" % (len(body), body), authed


def _read_command(reader: io.BufferedReader) -> list[str] | None:
    line = reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        raise ValueError(f"expected a multibulk request, got {line!r}")
    words = []
    for _ in range(int(line[1:])):
        header = reader.readline()
        if not header.startswith(b"$"):
            raise ValueError(f"expected a bulk string, got {header!r}")
        data = reader.read(int(header[1:]) + 2)
        words.append(data[:-2].decode())
    return words


@pytest.fixture
def fake() -> Iterator[FakeAdmin]:
    server = FakeAdmin()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_cli, "POLL_INTERVAL", 0.01)
    monkeypatch.delenv(admin_cli.PASSWORD_ENV, raising=False)
    monkeypatch.delenv(admin_cli.PROXY_ENV, raising=False)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = ringleader_main(["admin", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- arguments -> the exact command --------------------------------------------------------------


@pytest.mark.parametrize(("argv", "sent"), [
    (["status"], ["STATUS"]),
    (["add-node", "10.0.0.4:6379"], ["ADD-NODE", "10.0.0.4:6379"]),
    (["add-node", "10.0.0.4:6379", "--weight", "2", "--name", "d", "--dry-run"],
     ["ADD-NODE", "10.0.0.4:6379", "WEIGHT", "2", "NAME", "d", "DRY-RUN"]),
    (["remove-node", "10.0.0.2:6379"], ["REMOVE-NODE", "10.0.0.2:6379"]),
    (["remove-node", "shard-b", "--dry-run"], ["REMOVE-NODE", "shard-b", "DRY-RUN"]),
    (["move", "--arc", "100,0x1ff", "--arc", "7", "--to", "10.0.0.3:6379"],
     ["MOVE", "100,511,7", "10.0.0.3:6379"]),
    (["move", "--arc", "5", "--to", "c", "--dry-run"], ["MOVE", "5", "c", "DRY-RUN"]),
    (["rebalance"], ["REBALANCE"]),
    (["rebalance", "--target", "1.2", "--churn", "0.05", "--dry-run"],
     ["REBALANCE", "TARGET", "1.2", "CHURN", "0.05", "DRY-RUN"]),
    (["migrations"], ["MIGRATIONS"]),
    (["cancel", "3"], ["CANCEL", "3"]),
    (["hotkeys"], ["HOTKEYS"]),
])
def test_each_subcommand_sends_exactly_one_ringleader_command(fake, capsys, argv, sent):
    code, _, err = run(capsys, "--proxy", fake.address, *argv)
    assert code == 0, err
    assert fake.ringleader_commands() == [sent]
    assert all(c[0] == "RINGLEADER" for c in fake.commands), fake.commands  # nothing else


def test_connection_options_are_accepted_after_the_subcommand_too(fake, capsys):
    fake.password = "pw"
    code, _, err = run(capsys, "status", "--proxy", fake.address, "--password", "pw",
                       "--timeout", "5")
    assert code == 0, err
    assert fake.ringleader_commands() == [["AUTH", "pw"], ["STATUS"]]


@pytest.mark.parametrize("argv", [
    ["move", "--arc", "abc", "--to", "x"],
    ["move", "--arc", ",", "--to", "x"],
    ["add-node", "nohost"],
    ["add-node", "h:1", "--weight", "0"],
    ["rebalance", "--target", "0.5"],
    ["rebalance", "--churn", "2"],
])
def test_bad_arguments_are_usage_errors_and_send_nothing(fake, capsys, argv):
    code, _, err = run(capsys, "--proxy", fake.address, *argv)
    assert code == 2
    assert err.startswith("ringleader admin: ")
    assert fake.commands == []


def test_a_bad_proxy_address_is_a_usage_error(capsys):
    code, _, err = run(capsys, "--proxy", "localhost", "status")
    assert code == 2
    assert "bad proxy address 'localhost'" in err


# --- output --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "document"), [
    (["status"], STATUS),
    (["hotkeys"], HOTKEYS),
    (["migrations"], {"migrations": STATUS["migrations"]}),
    (["add-node", "h:1", "--dry-run"], plan_doc()),
    (["cancel", "4"], {"cancelled": 4}),
])
def test_json_prints_the_reply_document_unchanged(fake, capsys, argv, document):
    code, out, _ = run(capsys, "--proxy", fake.address, *argv, "--json")
    assert code == 0
    assert json.loads(out) == document


def test_status_table(fake, capsys):
    code, out, _ = run(capsys, "--proxy", fake.address, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "epoch 7   state dir: /var/lib/ringleader"
    header = next(line for line in lines if line.startswith("address"))
    assert header.split() == ["address", "state", "keys", "ops/s", "share", "replicas"]
    row = next(line for line in lines if line.startswith("127.0.0.1:7001"))
    assert row.split() == ["127.0.0.1:7001", "up", "12,345", "1,234.5", "50.00%",
                           "127.0.0.1:7101"]
    assert row.index("12,345") + 6 == header.index("keys") + 4  # right-aligned numbers
    assert "warning: shard 127.0.0.1:7002 (127.0.0.1:7002) is down" in lines
    assert "migrations in progress (1):" in lines
    assert "1 finished migration (`ringleader admin migrations` lists them)" in lines
    assert any(line.split()[:3] == ["proxy:b:2:7000", "proxy", "6"] and "(behind)" in line
               for line in lines)


def test_dry_run_prints_the_plan_and_starts_nothing(fake, capsys):
    code, out, _ = run(capsys, "--proxy", fake.address, "add-node", "127.0.0.1:7004",
                       "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "plan: add shard 127.0.0.1:7004 (from epoch 4, 2 moves)"
    assert "  3 split points inserted" in lines
    assert any(line.split() == ["1", "2", "127.0.0.1:7001", "->", "127.0.0.1:7004",
                                "2,276", "-", "7.69%", "-"] for line in lines)
    assert any(line.split()[:3] == ["3", "total", "4,779"] for line in lines)
    assert "expected load after:" in lines
    assert "  max/mean: keys 1.00 -> 1.16" in lines
    assert "  move 1 arcs ending at: 0x64, 0xc8" in lines  # hex, as --arc accepts
    assert "started" not in out


def test_a_started_operation_prints_its_plan_and_migration_ids(fake, capsys):
    code, out, _ = run(capsys, "--proxy", fake.address, "remove-node", "127.0.0.1:7002")
    assert code == 0
    assert "  then remove shard 127.0.0.1:7002" in out
    assert "127.0.0.1:7002 (removed)" in out
    assert "started migration 7" in out
    assert f"follow with: ringleader admin --proxy {fake.address} migrations" in out


def test_hotkeys_and_migrations_tables(fake, capsys):
    _, out, _ = run(capsys, "--proxy", fake.address, "hotkeys")
    assert out.splitlines()[1].split() == ["counter", "12,000.5", "127.0.0.1:7002", "split"]
    _, out, _ = run(capsys, "--proxy", fake.address, "migrations")
    assert out.splitlines()[0].split()[:6] == ["id", "source", "target", "arcs", "state",
                                               "moved"]


def test_an_error_reply_exits_1_with_the_proxys_message(fake, capsys):
    fake.replies["REMOVE-NODE"] = Err("ERR ringleader: no shard 'nope'")
    code, out, err = run(capsys, "--proxy", fake.address, "remove-node", "nope")
    assert code == 1
    assert out == ""
    assert err == "ringleader admin: REMOVE-NODE failed: no shard 'nope'\n"


def test_a_server_without_the_admin_protocol_is_named(fake, capsys):
    fake.replies["STATUS"] = Err("ERR unknown command 'RINGLEADER', with args beginning with:")
    code, _, err = run(capsys, "--proxy", fake.address, "status")
    assert code == 1
    assert f"is {fake.address} a ringleader proxy?" in err


def test_a_reply_that_is_not_json_exits_1(fake, capsys):
    fake.replies["STATUS"] = "not json"
    code, _, err = run(capsys, "--proxy", fake.address, "status")
    assert code == 1
    assert "not JSON" in err


# --- connection and authentication ---------------------------------------------------------------


def test_connection_refused_exits_2_naming_the_address(capsys):
    address = f"{HOST}:{free_port()}"
    started = time.monotonic()
    code, out, err = run(capsys, "--proxy", address, "status")
    assert code == 2
    assert out == ""
    assert f"cannot reach the proxy at {address}" in err
    assert time.monotonic() - started < 3  # no silent retries


def test_no_reply_within_the_timeout_exits_2(fake, capsys):
    fake.replies["ADD-NODE"] = lambda a: time.sleep(0.6) or plan_doc()
    code, _, err = run(capsys, "--proxy", fake.address, "--timeout", "0.2", "add-node", "h:1")
    assert code == 2
    assert f"no reply from the proxy at {fake.address} within 0.2 s" in err
    assert "may still have been done" in err


def test_the_admin_password_is_sent_first_on_the_connection(fake, capsys, monkeypatch):
    fake.password = "s3cret"
    monkeypatch.setenv(admin_cli.PASSWORD_ENV, "s3cret")
    code, _, err = run(capsys, "--proxy", fake.address, "status")
    assert code == 0, err
    assert fake.ringleader_commands() == [["AUTH", "s3cret"], ["STATUS"]]


def test_a_wrong_admin_password_exits_2_with_a_clear_message(fake, capsys):
    fake.password = "s3cret"
    code, out, err = run(capsys, "--proxy", fake.address, "--password", "guess", "status")
    assert code == 2
    assert out == ""
    assert err == (f"ringleader admin: the proxy at {fake.address} refused the admin "
                   "password (invalid admin password)\n")
    assert ["STATUS"] not in fake.ringleader_commands()


def test_a_missing_admin_password_says_how_to_give_one(fake, capsys):
    fake.password = "s3cret"
    code, _, err = run(capsys, "--proxy", fake.address, "status")
    assert code == 2
    assert "needs the admin password: give --password or set RINGLEADER_ADMIN_PASSWORD" in err


# --- --wait --------------------------------------------------------------------------------------


def scripted_migrations(fake: FakeAdmin, final: dict[int, str], steps: int = 4) -> Counter:
    """MIGRATIONS advances migrations 5 and 6 by one step per call, ending in ``final``."""
    calls: Counter = Counter()

    def reply(args: list[str]) -> dict:
        calls["n"] += 1
        n = calls["n"]
        records = [migration(1, state="done", moved=10)]  # history the wait must ignore
        for mid in (5, 6):
            if n == 1:
                records.append(migration(mid, state="waiting-barrier", remaining=None))
            elif n < steps:
                records.append(migration(mid, moved=n * 100, remaining=(steps - n) * 100))
            else:
                records.append(migration(mid, state=final[mid], moved=steps * 100,
                                         remaining=0,
                                         message="MIGRATE timed out" if final[mid] == "failed"
                                         else ""))
        return {"migrations": records}

    fake.replies["MIGRATIONS"] = reply
    return calls


def test_wait_follows_the_migrations_to_done_and_exits_0(fake, capsys):
    calls = scripted_migrations(fake, {5: "done", 6: "done"})
    code, out, err = run(capsys, "--proxy", fake.address, "add-node", "127.0.0.1:7004",
                         "--wait")
    assert code == 0, err
    assert calls["n"] == 4
    sent = fake.ringleader_commands()
    assert sent[0] == ["ADD-NODE", "127.0.0.1:7004"]
    assert sent[1:] == [["MIGRATIONS"]] * 4
    progress = err.splitlines()
    assert progress[0].startswith("migrations 5, 6: 2 waiting-barrier | 0 moved")
    assert any("2 moving | 400 moved, ~400 left [" in line and "50%" in line
               for line in progress)
    assert progress[-1].startswith("migrations 5, 6: 2 done | 800 moved")
    assert "\r" not in err  # not a terminal: plain lines
    assert out.rstrip().endswith("all 2 migrations done")


def test_wait_with_json_prints_only_the_reply_and_exits_1_when_a_migration_fails(fake, capsys):
    scripted_migrations(fake, {5: "done", 6: "failed"}, steps=2)
    code, out, err = run(capsys, "--proxy", fake.address, "add-node", "h:1", "--wait", "--json")
    assert code == 1
    assert json.loads(out) == plan_doc("add-node", [5, 6])  # one document, for scripts
    assert "migration 6 failed" in err


def test_wait_exit_1_names_the_failed_migration(fake, capsys):
    scripted_migrations(fake, {5: "done", 6: "failed"}, steps=2)
    code, out, err = run(capsys, "--proxy", fake.address, "add-node", "h:1", "--wait")
    assert code == 1
    assert "ringleader admin: migration 6 failed: MIGRATE timed out" in err
    assert "all 2 migrations done" not in out


def test_wait_gives_up_on_a_migration_the_proxy_no_longer_reports(fake, capsys, monkeypatch):
    monkeypatch.setattr(admin_cli, "MISSING_GRACE", 0.05)
    fake.replies["MIGRATIONS"] = {"migrations": []}
    code, _, err = run(capsys, "--proxy", fake.address, "move", "--arc", "1", "--to", "x",
                       "--wait")
    assert code == 1
    assert "migration 9 unknown: no longer reported by the proxy" in err


def test_wait_survives_a_dropped_connection_and_authenticates_again(fake, capsys):
    fake.password = "pw"
    calls = scripted_migrations(fake, {5: "done", 6: "done"})
    scripted = fake.replies["MIGRATIONS"]
    dropped = []

    def flaky(args: list[str]) -> Reply:
        if calls["n"] == 2 and not dropped:
            dropped.append(True)
            return Drop()
        return scripted(args)

    fake.replies["MIGRATIONS"] = flaky
    code, _, err = run(capsys, "--proxy", fake.address, "--password", "pw", "add-node", "h:1",
                       "--wait")
    assert code == 0, err
    assert "retrying" in err and f"reconnected to {fake.address}" in err
    assert [c for c in fake.ringleader_commands() if c[0] == "AUTH"] == [["AUTH", "pw"]] * 2


def test_dry_run_with_wait_does_not_wait(fake, capsys):
    code, _, _ = run(capsys, "--proxy", fake.address, "add-node", "h:1", "--dry-run", "--wait")
    assert code == 0
    assert ["MIGRATIONS"] not in fake.ringleader_commands()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_line_rewritten(fake):
    scripted_migrations(fake, {5: "done", 6: "done"})
    client = admin_cli.AdminClient(fake.address, timeout=5)
    stream = Terminal()
    try:
        final = wait_for_migrations(client, [5, 6], stream=stream, sleep=lambda s: None)
    finally:
        client.close()
    assert [m["state"] for m in final] == ["done", "done"]
    text = stream.getvalue()
    assert text.count("\r") == 4
    assert text.endswith("\n") and text.count("\n") == 1


def test_ctrl_c_during_wait_stops_waiting_and_exits_130(fake):
    fake.replies["MIGRATIONS"] = {"migrations": [migration(5), migration(6)]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "admin", "--proxy", fake.address, "add-node", "h:1",
         "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 8
        while fake.ringleader_commands().count(["MIGRATIONS"]) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the CLI never polled MIGRATIONS"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=8)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "started migrations 5, 6" in out
    assert "stopped waiting; migrations 5, 6 go on inside the proxy" in err


# --- the pure renderers --------------------------------------------------------------------------


def test_render_plan_matches_plan_describe_from_json_alone():
    from rebalancer.planner import plan_add_node, plan_remove_node
    from rebalancer.topology import Shard, Topology
    from router.config import from_node_list
    from router.nodes import NodeSpec

    topology = Topology.from_config(from_node_list("10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379"))
    hash_of = topology.placement().hash
    arc_keys = dict(Counter(topology.arc_containing(hash_of(b"k:%d" % i)) for i in range(3000)))
    plans = [plan_add_node(topology, Shard.from_node(NodeSpec.parse("10.0.0.4:6379")),
                           arc_keys=arc_keys, arc_ops={k: v / 2 for k, v in arc_keys.items()},
                           bytes_per_key=100),
             plan_remove_node(topology, "10.0.0.2:6379", arc_keys=arc_keys)]
    for plan in plans:
        expected = plan.describe().splitlines()
        got = render_plan(json.loads(json.dumps({"plan": plan.to_json_dict(),
                                                 "migrations": []}))).splitlines()
        assert got[0] == expected[0]
        after = expected.index("expected load after:")
        assert got[got.index("expected load after:"):] == expected[after:]
        def move_rows(lines: list[str]) -> list[list[str]]:
            return [line.replace(",", "").split() for line in lines
                    if line.split()[:1] and line.split()[0].isdigit() and "->" in line.split()]

        assert move_rows(got) == move_rows(expected)
        assert len(move_rows(got)) == len(plan.moves)


def test_render_plan_of_the_proxys_move_dry_run_with_arc_counts_only():
    text = render_plan({"plan": {"kind": "move", "moves": [
        {"arcs": 3, "source": "a:1", "target": "b:2"}]}, "migrations": []})
    assert text.splitlines()[0] == "plan: move arcs (1 move)"
    assert text.splitlines()[2].split() == ["1", "3", "a:1", "->", "b:2", "?", "-", "?", "-"]
    text = render_plan({"plan": {"kind": "move"}, "migrations": [12]})
    assert text.splitlines() == ["plan: move arcs", "", "started migration 12"]


def test_render_plan_rebalance_verdict():
    doc = plan_doc("rebalance")["plan"] | {"target": 1.1, "churn": 0.1, "reached_target": False}
    assert "  target 1.10: NOT reached (churn budget 10% of keys)" in render_plan(doc)


def test_render_status_with_named_shards_and_no_store():
    doc = {"epoch": 1, "state_dir": None, "migrations": [], "participants": [],
           "shards": [{"id": "a", "address": "h:1", "replicas": [], "state": "up",
                       "keys": 10, "ops_per_sec": 1.0, "share": 1.0}]}
    lines = render_status(doc).splitlines()
    assert lines[0] == "epoch 1   state dir: (none: topology kept in memory)"
    assert lines[2].split() == ["shard", "address", "state", "keys", "ops/s", "share",
                                "replicas"]
    assert lines[3].split() == ["a", "h:1", "up", "10", "1.0", "100.00%", "-"]
    assert "no migration in progress" in lines


def test_render_migrations_reports_keys_too_big_and_messages():
    text = render_migrations({"migrations": [
        migration(2, state="failed", moved=5, too_big=["big:1", "big:2"],
                  message="MIGRATE timed out"),
        migration(3, moved=1234, remaining=None)]}, now=1100.0)
    lines = text.splitlines()
    assert lines[1].split() == ["2", "127.0.0.1:7001", "->", "127.0.0.1:7004", "2", "failed",
                                "5", "5", "-", "-", "10s", "0"]
    assert lines[2].split() == ["3", "127.0.0.1:7001", "->", "127.0.0.1:7004", "2", "moving",
                                "1,234", "1,234", "?", "500.0", "1m40s", "0"]
    assert ("migration 2: 2 keys too big to MIGRATE within the timeout, not moved: "
            "big:1, big:2") in lines
    assert "migration 2: MIGRATE timed out" in lines
    assert render_migrations({"migrations": []}) == "no migrations"


def test_render_hotkeys():
    lines = render_hotkeys(HOTKEYS).splitlines()
    assert lines[0].split() == ["key", "ops/s", "node", "mitigation"]
    assert lines[1].split()[0] == "counter"  # hottest first
    assert lines[-1] == ("cache: entries 2, bytes 2.0 kB, hits 300, misses 100, "
                         "invalidations 5, stored 7 (hit rate 75.0%)")
    assert render_hotkeys({"hotkeys": [], "cache": {}, "enabled": False}).startswith(
        "hot-key detection is off")
    assert render_hotkeys({"hotkeys": [{"key": "a\nb", "ops_per_sec": 1.0, "node": "n",
                                        "mitigation": "cache"}]}).splitlines()[1].startswith(
        "a\\nb")


def test_progress_line():
    assert progress_line([migration(4, moved=250, remaining=750)]) == (
        "migration 4 (127.0.0.1:7001 -> 127.0.0.1:7004): moving | 250 moved, ~750 left "
        "[#####...............] 25% | 500 keys/s, eta 1s")
    line = progress_line([migration(4, moved=10, remaining=None), migration(5, state="done",
                                                                           moved=90)])
    assert line == ("migrations 4, 5: 1 moving, 1 done | 100 moved (scanned 10, remaining "
                    "unknown) | 500 keys/s")
    assert progress_line([migration(4, state="done", moved=7, remaining=0)]).endswith(
        ": done | 7 moved")
