"""A one-bit, auto-resetting wakeup for one waiting task, and raw non-blocking socket I/O.

The data path hands work between tasks millions of times a second; ``trio.Event`` needs a new
object per cycle and trio's socket wrappers add a checkpoint per call. These primitives keep
exactly one thing: a task parked until someone calls ``set()``, and sends/receives that only
yield to the scheduler when the socket is not ready.
"""

from __future__ import annotations

import socket

import trio


class Wakeup:
    """``set()`` from sync code; ``await wait()`` returns once per ``set()`` burst.

    A ``set()`` while nobody waits is remembered, so the next ``wait()`` returns at once.
    """

    __slots__ = ("_task", "_flag")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._flag = False

    def set(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
        else:
            self._flag = True

    async def wait(self) -> None:
        if self._flag:
            self._flag = False
            await trio.lowlevel.checkpoint()
            return
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


async def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    """Write all of ``data`` to a non-blocking socket, waiting only when it is full."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


def tune(sock: socket.socket) -> None:
    """Non-blocking, no Nagle delay: every send is a whole pipeline batch already."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def close(sock: socket.socket) -> None:
    """Close a socket other tasks may be waiting on (they get ClosedResourceError)."""
    try:
        trio.lowlevel.notify_closing(sock)
    finally:
        sock.close()
