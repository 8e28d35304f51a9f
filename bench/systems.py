"""Starting and stopping what the harness measures: nodes, twemproxy, ringleader.

Every process is owned by a context manager, so it is stopped on normal exit, on errors
and on Ctrl-C (children run in their own session: the terminal's SIGINT reaches only the
harness, which then stops them in order). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.local_nodes import (
    HOST,
    RedisProcess,
    find_binary,
    free_port,
    redis_ping,
    start_redis,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent

try:  # psutil is in the ``bench`` extra; /proc is the fallback on Linux
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None


@dataclass
class System:
    """A target redis-benchmark can drive; ``pid`` is the process whose CPU is measured."""

    name: str
    port: int
    proc: subprocess.Popen | None = None
    cpu_of: str | None = None  # what ``proc`` is: "redis-server", "nutcracker", "ringleader"
    log: Path | None = None
    host: str = HOST

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def check_alive(self) -> None:
        """Raise, with the process's log, when the measured process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; "
                               f"log:\n{tail(self.log)}")


# ---------------------------------------------------------------- CPU time


def parse_proc_stat(text: str) -> tuple[int, int, int]:
    """(utime, stime, ppid) in clock ticks from the text of ``/proc/PID/stat``.

    The command name (field 2) may contain spaces and parentheses, so fields are counted
    from the last ``)``.
    """
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15, ppid is field 4
    return int(rest[11]), int(rest[12]), int(rest[1])


def _proc_cpu_seconds(pid: int, include_children: bool) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    if include_children:
        parents = {pid}
        table: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    table[int(entry)] = parse_proc_stat(Path(f"/proc/{entry}/stat").read_text())[2]
        changed = True
        while changed:
            changed = False
            for child, ppid in table.items():
                if ppid in parents and child not in parents:
                    parents.add(child)
                    changed = True
        pids = sorted(parents)
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            utime, stime, _ = parse_proc_stat(Path(f"/proc/{p}/stat").read_text())
            total += utime + stime
    return total / ticks


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """User + system CPU seconds used so far by ``pid`` (and its live descendants).

    Descendants count because ``ringleader serve --workers N`` forks workers that do the
    work; a delta of this value across a run is the proxy's CPU for that run.
    """
    if psutil is None:
        return _proc_cpu_seconds(pid, include_children)
    proc = psutil.Process(pid)
    procs = [proc]
    if include_children:
        with contextlib.suppress(psutil.Error):
            procs += proc.children(recursive=True)
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


# ---------------------------------------------------------------- managed subprocesses


def _descendants(pid: int) -> list[int]:
    if psutil is None:
        return []
    with contextlib.suppress(psutil.Error):
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return []


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal ``proc``, wait, then SIGKILL it and any descendant it left behind.

    Descendants are looked up before the signal (a multi-worker proxy's workers), so that
    a parent that dies without reaping them does not leave them running.
    """
    if proc.poll() is not None:
        return
    children = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout)
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)


def tail(path: Path | None, limit: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-limit:]


@contextlib.contextmanager
def nodes(count: int) -> Iterator[list[RedisProcess]]:
    """``count`` redis-server nodes, all stopped on exit."""
    started: list[RedisProcess] = []
    try:
        for _ in range(count):
            started.append(start_redis())
        yield started
    finally:
        for node in started:
            node.stop()


def direct_system(node: RedisProcess) -> System:
    return System("direct", node.port, proc=node.proc, cpu_of="redis-server")


def twemproxy_config(listen_port: int, node_addresses: Sequence[str], name: str = "ringbench") -> str:
    """nutcracker YAML: ketama over fnv1a_64, one connection per node, no host ejection.

    One server connection per node matches ringleader's design (one shared pipelined
    connection per node), so the two proxies are compared like for like.
    """
    servers = "\n".join(f"   - {address}:1" for address in node_addresses)
    return (
        f"{name}:\n"
        f"  listen: {HOST}:{listen_port}\n"
        "  hash: fnv1a_64\n"
        "  distribution: ketama\n"
        "  redis: true\n"
        "  auto_eject_hosts: false\n"
        "  server_connections: 1\n"
        "  preconnect: true\n"
        "  timeout: 5000\n"
        "  servers:\n"
        f"{servers}\n"
    )


@contextlib.contextmanager
def twemproxy(node_list: Sequence[RedisProcess], workdir: Path) -> Iterator[System]:
    """A nutcracker in front of ``node_list``; stopped on exit."""
    binary = find_binary("nutcracker", "apt-get install nutcracker (twemproxy)")
    port, stats_port = free_port(), free_port()
    config = workdir / "nutcracker.yml"
    config.write_text(twemproxy_config(port, [n.address for n in node_list]))
    log = workdir / "nutcracker.log"
    proc = subprocess.Popen(
        [binary, "-c", str(config), "-s", str(stats_port), "-a", HOST, "-o", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        try:
            wait_until(lambda: redis_ping(HOST, port), 10, f"nutcracker on port {port}", proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; log:\n{tail(log)}") from None
        yield System("twemproxy", port, proc=proc, cpu_of="nutcracker", log=log)
    finally:
        stop_process(proc)


def ringleader_available() -> bool:
    """True when ``python -m router serve`` exists in this checkout."""
    try:
        return importlib.util.find_spec("router.__main__") is not None
    except (ImportError, ValueError):
        return False


def ringleader_command(port: int, node_list: Sequence[RedisProcess], workers: int | None = None,
                       extra: Sequence[str] = (), wrapper: Sequence[str] = ()) -> list[str]:
    """The argv of ``ringleader serve``; ``wrapper`` runs it under e.g. cProfile."""
    argv = [sys.executable, *wrapper]
    argv += ["-m", "router", "serve", "--listen", f"{HOST}:{port}",
             "--nodes", ",".join(n.address for n in node_list)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv + list(extra)


@contextlib.contextmanager
def ringleader(node_list: Sequence[RedisProcess], workdir: Path, workers: int | None = None,
               extra: Sequence[str] = (), wrapper: Sequence[str] = (),
               stop_signal: int = signal.SIGTERM, repo: Path = REPO) -> Iterator[System]:
    """``ringleader serve`` in front of ``node_list``; stopped on exit with ``stop_signal``.

    ``stop_signal`` is SIGINT under cProfile, which writes its stats file only when the
    program ends normally or by KeyboardInterrupt. ``repo`` is the checkout whose code runs
    (another revision's worktree, for ``bench.ab``), not whatever is installed.
    """
    port = free_port()
    log = workdir / f"ringleader-{port}.log"
    argv = ringleader_command(port, node_list, workers, extra, wrapper)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=repo, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        try:
            wait_until(lambda: redis_ping(HOST, port), 30, f"ringleader on port {port}", proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; command: {' '.join(argv)}; log:\n{tail(log)}") from None
        yield System("ringleader", port, proc=proc, cpu_of="ringleader", log=log)
    finally:
        stop_process(proc, stop_signal, timeout=30)
