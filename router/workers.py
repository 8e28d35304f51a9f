"""``ringleader serve --workers N``: N proxy processes sharing one listening port.

Each worker is a whole proxy (its own poller and node connections) on a socket bound with
SO_REUSEPORT, so the kernel spreads incoming connections over them and a worker's clients
never wait on another worker. The parent only starts them, forwards SIGINT/SIGTERM, and
exits when they have (with the first non-zero status, if any).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from dataclasses import replace

from .config import ProxyConfig

log = logging.getLogger("ringleader.workers")


def _worker(config: ProxyConfig, index: int) -> None:
    import functools

    import trio

    from .cli import run_proxy

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    logging.getLogger().name = f"worker{index}"

    def announce(server) -> None:
        log.info("worker %d (pid %d) serving on %s:%d", index, os.getpid(), *server.address)

    trio.run(functools.partial(run_proxy, config, announce=announce))


def run_workers(config: ProxyConfig) -> int:
    """Start ``config.workers`` processes and wait for them; returns the exit status."""
    context = multiprocessing.get_context("spawn")
    single = replace(config, workers=config.workers)  # each opens its own SO_REUSEPORT socket
    processes = [context.Process(target=_worker, args=(single, i), name=f"ringleader-{i}")
                 for i in range(config.workers)]
    for process in processes:
        process.start()

    def forward(signum, frame) -> None:
        for process in processes:
            if process.pid and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for process in processes:
        process.join()
        if process.exitcode and not status:
            status = process.exitcode
    return status
