"""The id table (id hash -> row) against a plain dict, including a larger table built aside while writes go on
into the old one (id_table.Growth), as the collection's writer does past GROW_AHEAD_LOAD."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from index_service.id_table import Growth, IdTable, id_hashes

KEYS = st.lists(st.integers(0, 2500), max_size=400, unique=True)
STEPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, st.integers(0, 10**9)),
    st.tuples(st.just("remove"), KEYS, st.just(0)),
    st.tuples(st.just("grow"), st.just([]), st.just(0)),
    st.tuples(st.just("finish"), st.just([]), st.just(0)),
), max_size=40)


def hashes(keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return id_hashes([f"item-{k}" for k in keys])


def agrees(table: IdTable, model: dict[int, int]) -> None:
    everything = list(range(2501))
    found = table.lookup(*hashes(everything))
    assert found.tolist() == [model.get(k, -1) for k in everything]
    assert table.count == len(model)
    high, low, rows = table.entries()
    assert sorted(rows.tolist()) == sorted(model.values())


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_the_id_table_agrees_with_a_dict_through_growths_built_aside(steps):
    table, model, growth = IdTable(), {}, None
    for kind, keys, base in steps:
        if kind == "put":
            rows = np.arange(base, base + len(keys), dtype=np.int64)
            table.put(*hashes(keys), rows)
            model.update(zip(keys, rows.tolist()))
        elif kind == "remove":
            assert table.remove(*hashes(keys)) == sum(k in model for k in keys)
            for k in keys:
                model.pop(k, None)
        elif kind == "grow" and growth is None:
            growth = Growth(table)
            capacity = table.capacity
        elif kind == "finish" and growth is not None:
            table, growth = growth.finish(), None
            assert table.capacity >= 2 * capacity and table.changes is None
        agrees(table, model)
    if growth is not None:
        agrees(growth.finish(), model)


def test_a_growth_replays_the_writes_made_while_it_was_built_in_order():
    table = IdTable()
    table.put(*hashes(list(range(600))), np.arange(600, dtype=np.int64))
    growth = Growth(table)
    table.put(*hashes([5, 700]), np.array([50, 70], np.int64))  # a replacement and a new id
    table.remove(*hashes([5, 6]))
    table.put(*hashes([5]), np.array([55], np.int64))  # back after its removal: the last write wins
    grown = growth.finish()
    assert grown.capacity == 2 * table.capacity
    assert grown.lookup(*hashes([5, 6, 7, 700])).tolist() == [55, -1, 7, 70]
    assert table.changes is None  # the old table stops recording
