"""Array specs of ``start --array`` (``bai.common.arrays``), as ``sbatch --array`` reads them."""

from __future__ import annotations

import pytest

from bai.common.arrays import MAX_ARRAY, ArraySpecError, element_name, parse_array


@pytest.mark.parametrize("spec, indices", [
    ("1-3", [1, 2, 3]),
    ("0", [0]),
    ("0-10:5", [0, 5, 10]),
    ("1-10:4", [1, 5, 9]),
    ("7,1,3", [1, 3, 7]),
    ("1-3, 2-4 ,10", [1, 2, 3, 4, 10]),
    (" 5-5 ", [5]),
    (f"1-{MAX_ARRAY}", list(range(1, MAX_ARRAY + 1))),
    (f"1-{MAX_ARRAY},1-{MAX_ARRAY}", list(range(1, MAX_ARRAY + 1))),
])
def test_specs_give_their_indices_ascending(spec, indices):
    assert parse_array(spec) == indices


@pytest.mark.parametrize("spec, why", [
    ("", "empty"),
    ("  ", "empty"),
    ("a-b", "invalid array item"),
    ("1-", "invalid array item"),
    ("-1", "invalid array item"),
    ("1..3", "invalid array item"),
    ("1-3:", "invalid array item"),
    ("1,,2", "invalid array item"),
    ("3-1", "3 > 1"),
    ("1-5:0", "step"),
    (f"1-{MAX_ARRAY + 1}", "more than 10,000"),
    (f"0-{MAX_ARRAY - 1},{MAX_ARRAY}", "more than 10,000"),
    ("0-999999999", "more than 10,000"),
    (",".join(["1-10000"] * 3), "more than 10,000"),
    ("1" * 70_000, "longer than"),
])
def test_bad_specs_are_refused_with_one_line(spec, why):
    with pytest.raises(ArraySpecError) as e:
        parse_array(spec)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_element_names_are_name_dash_index():
    assert element_name("job", 7) == "job-7"
