"""The one line the CLI prints for a failure."""

from __future__ import annotations

from bai.client.cli.main import describe
from bai.common.errors import UnknownImage


def test_unknown_image_lists_what_is_available_once():
    err = UnknownImage("unknown image 'x'; available images: py:1; aliases: python -> py:1",
                       data={"image": "x", "available": ["py:1"], "aliases": {"python": "py:1"}})
    line = describe(err)
    assert line.lower().count("available") == 1 and "py:1" in line


def test_a_bare_error_gets_the_available_list_from_its_data():
    line = describe(UnknownImage("unknown image 'x'", data={"available": ["py:1"], "aliases": []}))
    assert line == "unknown image 'x'. Available: py:1; aliases: none"
