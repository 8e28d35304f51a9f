"""A ``ringleader serve --config FILE`` process for the benchmarks that need settings the
side-by-side harness does not pass (acknowledgement levels, read policies, a state dir)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from backends.local_nodes import HOST, free_port, redis_ping, wait_until

from .systems import REPO, stop_process, tail


@contextlib.contextmanager
def proxy_from_toml(text: str, workdir: Path) -> Iterator[str]:
    """Start the proxy with ``text`` as its TOML; yields its address; stops it after."""
    port = free_port()
    config = workdir / f"ringleader-{port}.toml"
    config.write_text(text)
    log = workdir / f"ringleader-{port}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--listen", f"{HOST}:{port}",
             "--config", str(config)], stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    try:
        try:
            wait_until(lambda: redis_ping(HOST, port), 30, "ringleader", proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; log:\n{tail(log)}") from None
        yield f"{HOST}:{port}"
    finally:
        stop_process(proc)
