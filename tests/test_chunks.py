"""How a series is cut into pool tasks (shared.chain.chunked)."""
from __future__ import annotations

import pytest

from shared.chain import MAX_CHUNK, chunk_size, chunked


@pytest.mark.parametrize("items,processes", [(0, 2), (1, 1), (7, 2), (200, 1), (200, 2), (1000, 2), (333, 4)])
def test_chunks_keep_every_item_once_in_order_and_at_most_chunk_size(items, processes):
    chunks = chunked(list(range(items)), processes)
    assert [i for chunk in chunks for i in chunk] == list(range(items))
    assert all(1 <= len(chunk) <= max(1, chunk_size(items, processes)) for chunk in chunks)


def test_one_process_gets_equal_chunks_several_get_a_shrinking_tail():
    assert [len(c) for c in chunked(list(range(200)), 1)] == [32] * 6 + [8]
    sizes = [len(c) for c in chunked(list(range(200)), 2)]
    assert sizes[:5] == [25] * 5 and sizes[-6:] == [3, 2, 1, 1, 1, 1]
    assert sizes == sorted(sizes, reverse=True)
    long = [len(c) for c in chunked(list(range(1000)), 2)]
    assert long[:28] == [MAX_CHUNK] * 28 and long[-4:] == [1, 1, 1, 1]


def test_a_short_series_gets_four_tasks_a_process():
    assert chunk_size(40, 2) == 5 and chunk_size(3, 2) == 1 and chunk_size(10_000, 8) == MAX_CHUNK
