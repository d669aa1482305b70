"""Array specs (``start --array 1-10``, as ``sbatch --array`` reads them); stdlib only.

A spec is a comma-separated list of items, each ``N``, ``A-B`` or ``A-B:STEP`` (non-negative
integers, ``A <= B``, ``STEP >= 1``). The indices are the union of the items, ascending; at most
``MAX_ARRAY`` of them. The client and the manager parse with the same function, so a spec the
CLI accepts is one the manager accepts.
"""

from __future__ import annotations

import re

#: the most elements one array may have
MAX_ARRAY = 10_000
#: the longest spec text accepted (a comma list of 10,000 five-digit indices fits)
MAX_SPEC_CHARS = 65_536
#: the environment variable that holds an element's index
INDEX_VAR = "BAI_ARRAY_INDEX"

_ITEM = re.compile(r"^(\d{1,9})(?:-(\d{1,9})(?::(\d{1,9}))?)?$")


class ArraySpecError(ValueError):
    """A spec that is not one; the message says why, in one line."""


def parse_array(spec: str) -> list[int]:
    """The indices of ``spec`` (ascending, without repeats); ``ArraySpecError`` if it is bad."""
    text = str(spec).strip()
    if not text:
        raise ArraySpecError("empty array spec: use e.g. 1-10, 0-100:10 or 1,3,5")
    if len(text) > MAX_SPEC_CHARS:
        raise ArraySpecError(f"array spec longer than {MAX_SPEC_CHARS} characters")
    found: set[int] = set()
    listed = 0  # with repeats: bounds the work a spec of overlapping ranges can ask for
    for item in text.split(","):
        m = _ITEM.match(item.strip())
        if m is None:
            raise ArraySpecError(
                f"invalid array item {item.strip()[:40]!r}: use N, A-B or A-B:STEP "
                "(non-negative integers), comma separated")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3)) if m.group(3) is not None else 1
        if last < first:
            raise ArraySpecError(f"invalid array range {item.strip()!r}: {first} > {last}")
        if step < 1:
            raise ArraySpecError(f"invalid array step in {item.strip()!r}: must be at least 1")
        listed += (last - first) // step + 1
        if listed > MAX_ARRAY * 2:
            raise ArraySpecError(f"array of more than {MAX_ARRAY:,} elements")
        found.update(range(first, last + 1, step))
        if len(found) > MAX_ARRAY:
            raise ArraySpecError(f"array of more than {MAX_ARRAY:,} elements")
    return sorted(found)


def element_name(name: str, index: int) -> str:
    """The session name of one element: ``NAME-INDEX``."""
    return f"{name}-{index}"
