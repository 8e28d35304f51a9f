"""ringleader's data path: RESP server, command table, ring, routes and the library client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ShardedClient", "TrioShardedClient"]

if TYPE_CHECKING:
    from .client import ShardedClient
    from .trio_client import TrioShardedClient

#: Imported on first use, so that ``import router`` stays light for the proxy (redis-py is
#: needed only by the library clients).
_LAZY = {"ShardedClient": ".client", "TrioShardedClient": ".trio_client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
