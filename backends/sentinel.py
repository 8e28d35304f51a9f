"""Following a shard's primary through Redis Sentinel.

Redis Sentinel decides failovers; ringleader only listens. A ``SentinelWatcher`` keeps
asking the sentinels which node is the primary of one monitored master name and tells its
owner whenever the answer changes, so the owner can point the shard's node connection at the
new address. ``query_primary`` asks once, blocking, for startup and the CLI.

What the watcher reports:

- the primary's address when it first learns it and whenever it changes: promptly on a
  ``+switch-master`` event from the sentinel it follows (published when a failover ends), and
  on the periodic re-query that also proves the sentinel is still alive;
- ``None`` while there is no usable primary: the sentinel does not know the master name, or
  the sentinels agree the primary is down (``+odown``: objectively down, a quorum agrees, and
  a failover starts). Writes can then fail fast instead of waiting on a dead node.
  ``+sdown`` is ignored: it is one sentinel's opinion, possibly of its own network trouble,
  and a write may well still succeed;
- nothing while no sentinel can be reached: the last known primary stays, because losing
  the sentinels says nothing about the primary (a node connection that fails still fails
  fast on its own).

The decisions (what a reply or an event means) are plain functions, ``primary_from`` and
``parse_event``; the watcher is the trio shell around them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

import hiredis
import trio

log = logging.getLogger("ringleader.sentinel")

Address = tuple[str, int]

#: The events the watcher subscribes to on the sentinel it follows.
EVENTS = (b"+switch-master", b"+odown", b"-odown")


class SentinelError(Exception):
    """A sentinel answered something unusable (an error reply, not a sentinel at all)."""


class SentinelUnavailable(SentinelError):
    """No sentinel could be asked; the message has each one's reason."""


# ---------------------------------------------------------------------- decisions (sans I/O)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def primary_from(addr_reply: object, master_reply: object) -> Address | None:
    """The usable primary, from a sentinel's replies to ``SENTINEL get-master-addr-by-name``
    and ``SENTINEL MASTER`` (the latter only for its flags).

    None when the name is unknown, or when the sentinel holds the primary objectively down
    (``o_down``) and still names that same node: during a failover's last step the address
    already names the promoted replica, which is usable even though the flag is still set.
    """
    if not isinstance(addr_reply, list) or len(addr_reply) != 2:
        return None
    address = (_text(addr_reply[0]), int(addr_reply[1]))
    if isinstance(master_reply, list):
        items = [_text(x) for x in master_reply]
        state = dict(zip(items[::2], items[1::2], strict=False))
        if ("o_down" in state.get("flags", "").split(",")
                and (state.get("ip"), state.get("port")) == (address[0], str(address[1]))):
            return None
    return address


def parse_event(channel: bytes, data: bytes, master_name: str) -> tuple[str, Address] | None:
    """``(event, address)`` for a Sentinel event about ``master_name``, None for any other.

    ``+switch-master`` carries ``<name> <old-ip> <old-port> <new-ip> <new-port>`` and yields
    the new address; ``+odown``/``-odown`` carry ``master <name> <ip> <port> [...]`` and yield
    that (old) address. Events about other masters or about replicas yield None.
    """
    event = _text(channel)
    words = _text(data).split()
    try:
        if event == "+switch-master":
            if len(words) >= 5 and words[0] == master_name:
                return event, (words[3], int(words[4]))
        elif event in ("+odown", "-odown"):
            if len(words) >= 4 and words[0] == "master" and words[1] == master_name:
                return event, (words[2], int(words[3]))
    except ValueError:  # a port that is not a number: not an event we understand
        return None
    return None


def _query_commands(master_name: str) -> list[tuple[str, ...]]:
    return [("SENTINEL", "get-master-addr-by-name", master_name),
            ("SENTINEL", "MASTER", master_name)]


def _check_addr_reply(reply: object) -> None:
    if isinstance(reply, hiredis.ReplyError):  # not a sentinel, or refused: ask another
        raise SentinelError(f"get-master-addr-by-name failed: {reply}")


# ---------------------------------------------------------------------- blocking query


def query_primary(sentinels: Sequence[Address], master_name: str, timeout: float = 1.0,
                  *, password: str | None = None) -> Address | None:
    """Ask the sentinels in turn for ``master_name``'s primary, before any event loop runs.

    The first usable answer wins; None when every sentinel that answered knows no usable
    primary (unknown name, or the primary is objectively down). ``timeout`` bounds each
    sentinel's connect and answer. Raises ``SentinelUnavailable`` when no sentinel answered
    at all, since "the sentinels are unreachable" and "there is no primary" call for
    different messages to an operator.
    """
    failures = []
    answered = False
    for host, port in sentinels:
        try:
            addr_reply, master_reply = _ask_blocking(
                (host, port), _query_commands(master_name), password, timeout)
            _check_addr_reply(addr_reply)
        except (OSError, SentinelError, hiredis.ProtocolError) as exc:
            failures.append(f"{host}:{port}: {exc or type(exc).__name__}")
            continue
        answered = True
        primary = primary_from(addr_reply, master_reply)
        if primary is not None:
            return primary
    if not answered:
        raise SentinelUnavailable("no sentinel answered (" + "; ".join(failures) + ")")
    return None


def _ask_blocking(address: Address, commands: list[tuple[str, ...]], password: str | None,
                  timeout: float) -> list[object]:
    if password:
        commands = [("AUTH", password), *commands]
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))
        reader = hiredis.Reader()
        replies: list[object] = []
        while len(replies) < len(commands):
            data = sock.recv(65536)
            if not data:
                raise SentinelError("closed the connection")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    if password:
        if isinstance(replies[0], hiredis.ReplyError):
            raise SentinelError(f"AUTH failed: {replies[0]}")
        replies = replies[1:]
    return replies


# ---------------------------------------------------------------------- the watcher (trio)


class _Link:
    """One connection to a sentinel, with its reply parser."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()

    async def send(self, *commands: tuple[str | bytes, ...]) -> None:
        await self.stream.send_all(b"".join(hiredis.pack_command(c) for c in commands))

    async def read(self) -> object:
        """The next reply; error replies are returned as ``hiredis.ReplyError`` values."""
        while (reply := self.reader.gets()) is False:
            data = await self.stream.receive_some(65536)
            if not data:
                raise SentinelError("closed the connection")
            self.reader.feed(data)
        return reply


class SentinelWatcher:
    """Follows one master name's primary through a set of sentinels; see the module doc.

    ``on_change`` is called from ``run``'s task, synchronously, with the new address or
    None; an exception from it ends ``run`` as a ``RuntimeError`` (it is the owner's bug,
    not a lost sentinel to retry).
    ``primary`` is the last reported value and ``sentinel`` the sentinel followed right now
    (None while looking for one), for status pages.
    """

    def __init__(self, sentinels: Sequence[Address], master_name: str,
                 on_change: Callable[[Address | None], None], *,
                 password: str | None = None, connect_timeout: float = 1.0,
                 poll_interval: float = 2.0, retry_interval: float = 0.5) -> None:
        if not sentinels:
            raise ValueError("SentinelWatcher needs at least one sentinel address")
        self.sentinels = [(host, int(port)) for host, port in sentinels]
        self.master_name = master_name
        self.on_change = on_change
        self.password = password
        #: Bounds connecting and logging in, and each query's answer: a sentinel slower
        #: than this is treated as lost.
        self.connect_timeout = connect_timeout
        #: Re-query this often even without events: catches a missed event and proves the
        #: followed sentinel is still alive (a stopped one never closes the subscription).
        self.poll_interval = poll_interval
        #: Pause after every sentinel failed in a row, before trying them all again.
        self.retry_interval = retry_interval
        self.primary: Address | None = None
        self.sentinel: Address | None = None
        self._known = False  # has anything been reported yet

    async def run(self) -> None:
        """Follow the primary until cancelled (cancellation is shutdown: connections close,
        nothing is left running). On losing a sentinel, move on to the next one."""
        index = 0
        failed_in_row = 0
        count = len(self.sentinels)
        while True:
            address = self.sentinels[index]
            try:
                await self._follow(address)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, SentinelError,
                    hiredis.ProtocolError) as exc:
                reason = _describe(exc)
                if self.sentinel is not None:
                    log.warning("sentinel %s:%d lost (%s); trying the next one", *address, reason)
                    failed_in_row = 0
                else:
                    log.debug("sentinel %s:%d unusable: %s", *address, reason)
                    failed_in_row += 1
            finally:
                self.sentinel = None
            index = (index + 1) % count
            if failed_in_row >= count:
                log.warning("no sentinel of %s reachable; keeping primary %s, retrying",
                            self.master_name, self.primary)
                failed_in_row = 0
                await trio.sleep(self.retry_interval)

    async def _follow(self, address: Address) -> None:
        """Subscribe, then query (so no switch falls between the two), then serve events
        and re-query on a timer; returns only by raising when the sentinel is lost."""
        async with await self._open(address) as events_stream, \
                await self._open(address) as query_stream:
            events, query = _Link(events_stream), _Link(query_stream)
            with trio.fail_after(self.connect_timeout):
                await events.send(("SUBSCRIBE", *EVENTS))
                for _ in EVENTS:
                    reply = await events.read()
                    if not isinstance(reply, list) or reply[:1] != [b"subscribe"]:
                        raise SentinelError(f"SUBSCRIBE failed: {reply!r}")
            await self._query(query)
            self.sentinel = address
            log.info("following %s through sentinel %s:%d", self.master_name, *address)
            next_query = trio.current_time() + self.poll_interval
            while True:
                with trio.move_on_at(next_query):
                    message = await events.read()
                    if isinstance(message, list) and len(message) == 3 \
                            and message[0] == b"message":
                        if self._on_event(message[1], message[2]):
                            next_query = trio.current_time()
                    continue
                await self._query(query)
                next_query = trio.current_time() + self.poll_interval

    async def _open(self, address: Address) -> trio.SocketStream:
        with trio.fail_after(self.connect_timeout):
            stream = await trio.open_tcp_stream(*address)
            if self.password:
                try:
                    link = _Link(stream)
                    await link.send(("AUTH", self.password))
                    reply = await link.read()
                    if isinstance(reply, hiredis.ReplyError):
                        raise SentinelError(f"AUTH failed: {reply}")
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        return stream

    async def _query(self, query: _Link) -> None:
        with trio.fail_after(self.connect_timeout):
            await query.send(*_query_commands(self.master_name))
            addr_reply = await query.read()
            master_reply = await query.read()
        _check_addr_reply(addr_reply)
        self._report(primary_from(addr_reply, master_reply))

    def _on_event(self, channel: bytes, data: bytes) -> bool:
        """Act on one event; True when the sentinel should be asked again at once."""
        parsed = parse_event(channel, data, self.master_name)
        if parsed is None:
            return False
        event, address = parsed
        log.info("sentinel event %s %s", _text(channel), _text(data))
        if event == "+switch-master":
            self._report(address)
        elif event == "+odown":
            if address == self.primary:
                self._report(None)
        else:  # -odown: back without a failover, or superseded by one; ask what holds now
            return True
        return False

    def _report(self, primary: Address | None) -> None:
        if self._known and primary == self.primary:
            return
        level = logging.WARNING if self._known else logging.INFO  # a change is news
        self._known = True
        self.primary = primary
        log.log(level, "primary of %s is now %s", self.master_name,
                f"{primary[0]}:{primary[1]}" if primary else "unknown (none usable)")
        try:
            self.on_change(primary)
        except Exception as exc:  # never mistaken for a lost sentinel (say, an OSError)
            raise RuntimeError(f"on_change for {self.master_name} failed: {exc!r}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__
