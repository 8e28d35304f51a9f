"""The rebalancer's mover and the proxy's own keys: copies stay, counter parts move.

Copies of a replicated hot key are read on the node they were made on and each node's
registry of reserved keys describes that node; neither is data a migration should carry.
Parts of a split counter hold increments nowhere else, so they move like any key, and are
registered on the target so DBSIZE through a proxy keeps leaving them out.
"""

from __future__ import annotations

import trio
from helpers import direct

from hotkeys.reserved import REGISTRY, moves_with_its_arc
from rebalancer.mover import MoveProgress, MoveSettings, move_arcs
from router.nodes import NodeSpec

COPY = b"{rlcopy-7}popular:item"
PART = b"{rlsplit-3}counter:views"


def spec(node) -> NodeSpec:
    return NodeSpec(host=node.host, port=node.port)


def move_everything(source, target) -> MoveProgress:
    """Run the mover as if every key of ``source`` were in a moving arc."""
    progress = MoveProgress(id=1, source=source.address, target=target.address, arcs=1)
    trio.run(lambda: move_arcs(progress=progress, source=spec(source), target=spec(target),
                               belongs=lambda key: True, settings=MoveSettings()))
    return progress


def test_only_copies_and_registries_are_kept_from_moving():
    assert moves_with_its_arc(b"user:1")
    assert moves_with_its_arc(PART)
    assert not moves_with_its_arc(COPY)
    assert not moves_with_its_arc(REGISTRY)


def test_a_copy_in_a_moving_arc_stays_and_a_counter_part_moves(make_nodes):
    source, target = make_nodes(2)
    src, dst = direct(source), direct(target)
    src.mset({f"user:{i}": i for i in range(20)})
    src.sadd(REGISTRY, COPY, PART)
    src.set(COPY, "copy of popular:item")
    src.set(PART, 42)
    dst.sadd(REGISTRY, b"{rlcopy-1}already:there")
    dst.set(b"{rlcopy-1}already:there", "a copy the target holds")

    progress = move_everything(source, target)

    assert progress.moved == 21  # the users' keys and the part, nothing else
    assert sorted(src.keys()) == sorted([COPY, REGISTRY])
    assert src.get(COPY) == b"copy of popular:item"
    assert dst.get(PART) == b"42"
    assert all(dst.get(f"user:{i}") == str(i).encode() for i in range(20))
    # the target's registry was added to, not replaced by the source's
    assert dst.smembers(REGISTRY) == {b"{rlcopy-1}already:there", PART}
