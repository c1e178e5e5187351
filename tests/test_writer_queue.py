"""The writer's queue: group commit of disjoint writes, small writes ahead of queued large ones, and the
order of writes that share an id kept whatever their sizes. Ops are submitted to a real Writer while its
thread is held inside a first group; what it then applies, group by group, is checked against the rules."""

import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from index_service.writes import GROUP_ITEMS, SMALL_WRITE, WriteOp, Writer

SMALL, LARGE = 1, SMALL_WRITE + 1


def op(ids: list[str]) -> WriteOp:
    return WriteOp(delete_ids=ids)


def run_queue(ops: list[WriteOp]) -> list[list[WriteOp]]:
    """The groups a writer applies when `ops` are all queued behind a group in progress."""
    holding, groups = threading.Event(), []
    first = op(["held"])

    def apply(group):
        if group[0] is first:
            holding.wait(30)
        else:
            groups.append(group)
        for each in group:
            each.future.set_result(None)
    writer = Writer("test", apply)
    writer.submit(first)
    while not first.future.running():
        time.sleep(0.001)
    for each in ops:
        writer.submit(each)
    holding.set()
    for each in ops:
        each.future.result(30)
    deadline = time.monotonic() + 5
    while writer.backlog() and time.monotonic() < deadline:  # counted down right after the last group
        time.sleep(0.001)
    assert writer.backlog() == 0
    writer.close()
    return groups


def ids_of(size: int, base: int, shared: list[int]) -> list[str]:
    return [f"s{k}" for k in shared] + [f"u{base}-{i}" for i in range(size - len(shared))]


@st.composite
def queued_ops(draw):
    count = draw(st.integers(1, 12))
    specs = []
    for n in range(count):
        size = draw(st.sampled_from([SMALL, 3, LARGE, 4000]))
        shared = draw(st.lists(st.integers(0, 5), max_size=min(size, 3), unique=True))
        specs.append(ids_of(size, n, shared))
    return specs


@settings(max_examples=60, deadline=None)
@given(queued_ops())
def test_small_writes_pass_queued_large_ones_and_writes_sharing_an_id_keep_their_order(specs):
    ops = [op(ids) for ids in specs]
    groups = run_queue(ops)
    order = [each for group in groups for each in group]
    assert sorted(map(id, order)) == sorted(map(id, ops))  # each applied once
    position = {id(each): at for at, each in enumerate(order)}
    for group in groups:
        assert sum(each.size() for each in group) <= GROUP_ITEMS or len(group) == 1
        seen = set()
        for each in group:
            assert not (each.hashes() & seen), "a group holds two writes of one id"
            seen |= each.hashes()
    for a, earlier in enumerate(ops):
        for later in ops[a + 1:]:
            if earlier.hashes() & later.hashes():
                assert position[id(earlier)] < position[id(later)], "writes of one id applied out of order"
    # A small write that shares no id with any write queued before it goes ahead of every large one queued
    # before it.
    for b, small in enumerate(ops):
        before = ops[:b]
        if small.size() <= SMALL_WRITE and not any(small.hashes() & each.hashes() for each in before):
            for large in before:
                if large.size() > SMALL_WRITE:
                    assert position[id(small)] < position[id(large)]


def test_a_one_item_write_behind_a_bulk_queue_waits_for_no_bulk_write():
    bulk = [op(ids_of(8000, n, [])) for n in range(4)]
    probe = op(["probe"])
    groups = run_queue([*bulk, probe])
    assert groups[0] == [probe]
    assert [each for group in groups[1:] for each in group] == bulk
