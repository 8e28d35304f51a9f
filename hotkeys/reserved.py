"""Keys the proxy keeps for itself on the nodes, and how clients are kept from seeing them
(sans-I/O: names and scripts only).

Three kinds of reserved key live next to the users' keys:

- copies of replicated hot keys, ``{rlcopy-N}key`` (hotkeys/copies.py);
- parts of split counters, ``{rlsplit-N}key`` (hotkeys/splitting.py);
- on each node, a registry set, ``{rlreserved}keys``, naming the reserved keys of the two
  kinds above that this node holds.

SCAN and KEYS drop reserved names by their prefix. DBSIZE is a count, so names cannot be
filtered out of it: each node runs ``DBSIZE_SCRIPT``, which subtracts the registry itself and
its members that exist. The proxy adds a name to the registry *before* it creates the key
and removes it *after* the key is deleted, so a reserved key is never counted as a user's;
a stale name (a copy that expired, a part the mover took to another node) costs nothing,
EXISTS says 0 for it.
"""

from __future__ import annotations

from .copies import COPY_PREFIX
from .splitting import SUB_PREFIX

#: The registry's own prefix (its hash tag): hidden from SCAN and KEYS like the others.
REGISTRY_PREFIX = b"{rlreserved}"
#: One set per node, holding the names of that node's reserved keys.
REGISTRY = REGISTRY_PREFIX + b"keys"

#: Prefixes of every key the proxy keeps for itself.
RESERVED = (SUB_PREFIX, COPY_PREFIX, REGISTRY_PREFIX)

#: DBSIZE without the proxy's keys. KEYS[1] is the registry. Read-only (it runs on Redis 7.0
#: without shebang flags). Existence is checked before DBSIZE is read, so a registered copy
#: that has just expired is deleted by that check and counted by neither; members are
#: checked in chunks to stay within Lua's stack for unpack().
DBSIZE_SCRIPT = b"""
local reserved = 0
if redis.call('TYPE', KEYS[1])['ok'] == 'set' then
  local names = redis.call('SMEMBERS', KEYS[1])
  for i = 1, #names, 500 do
    reserved = reserved + redis.call('EXISTS', unpack(names, i, math.min(i + 499, #names)))
  end
  reserved = reserved + 1
end
return redis.call('DBSIZE') - reserved
"""


#: RANDOMKEY without the proxy's keys: a few random draws on the node, then (a node holding
#: mostly the proxy's keys, which are few) a SCAN for any user's key; nil only when the node
#: has none.
RANDOMKEY_SCRIPT = b"""
local function visible(key)
  for _, prefix in ipairs(ARGV) do
    if string.sub(key, 1, #prefix) == prefix then return false end
  end
  return true
end
for _ = 1, 16 do
  local key = redis.call('RANDOMKEY')
  if not key then return false end
  if visible(key) then return key end
end
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'COUNT', 100)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if visible(key) then return key end
  end
until cursor == '0'
return false
"""


def randomkey_call() -> list[bytes]:
    """The request each node gets for a RANDOMKEY through the proxy."""
    return [b"EVAL", RANDOMKEY_SCRIPT, b"0", *RESERVED]


def dbsize_call() -> list[bytes]:
    """The request each node gets for a DBSIZE through the proxy."""
    return [b"EVAL", DBSIZE_SCRIPT, b"1", REGISTRY]


def is_reserved(key: bytes) -> bool:
    """Whether ``key`` is one of the proxy's own keys (by its prefix)."""
    return key.startswith(RESERVED)


def moves_with_its_arc(key: bytes) -> bool:
    """Whether the rebalancer's mover migrates ``key`` when its arc moves.

    Copies are not data: they are read at the node the proxy made them on (by node, not by
    the ring), and a MIGRATE ... REPLACE of one node's registry would overwrite the target's.
    Split parts *are* data (their increments are in no other key) and move like any key.
    """
    return not (key.startswith(COPY_PREFIX) or key.startswith(REGISTRY_PREFIX))
