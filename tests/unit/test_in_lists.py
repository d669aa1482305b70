"""IN-lists of the set-based transitions: every item once or more, few distinct lengths."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bai.manager.services.transitions import in_lists


@given(st.lists(st.integers(), max_size=1300), st.sampled_from([8, 64, 500]))
def test_in_lists_cover_every_item_in_order_with_padded_lengths(items, n):
    chunks = list(in_lists(items, n))
    assert [x for c in chunks for x in dict.fromkeys(c)] == [
        x for c in (items[i:i + n] for i in range(0, len(items), n)) for x in dict.fromkeys(c)]
    assert all(len(c) <= n for c in chunks)
    # lengths are powers of two from 8 up, or n itself: a handful of statement texts
    assert {len(c) for c in chunks} <= {8, 16, 32, 64, 128, 256, n}
    assert all(set(c) <= set(items) for c in chunks)
