"""The mount requests of a create body as the official client 23.9.10 sends them (and bai's
``:ro``), and the paths no folder may take."""

from __future__ import annotations

import pytest

from bai.common.errors import InvalidAPIParameters
from bai.common.mounts import MountRequest, parse_mounts, relpath_problem


def test_the_official_clients_forms() -> None:
    # -m data1 -m data2=/mnt/d2 -m data3:rel/path -m data4:/d4:ro -m data5:ro
    got = parse_mounts(["data3", "data1", "data2", "data4", "data5"],
                       {"data2": "/mnt/d2", "data3": "rel/path", "data4": "/d4:ro",
                        "data5": "ro"})
    assert got == [
        MountRequest("data3", "/home/work/rel/path", None),
        MountRequest("data1", "/home/work/data1", None),
        MountRequest("data2", "/mnt/d2", None),
        MountRequest("data4", "/d4", "ro"),
        MountRequest("data5", "/home/work/data5", "ro"),
    ]


def test_mount_options_and_names_only_in_the_map() -> None:
    got = parse_mounts([], {"a": "x:rw"}, {"a": {"permission": "wd"}})
    assert got == [MountRequest("a", "/home/work/x", "rw")]
    assert parse_mounts(["b"], None, {"b": {"permission": "ro"}}) == [
        MountRequest("b", "/home/work/b", "ro")]
    assert parse_mounts(["c", "c"]) == [MountRequest("c", "/home/work/c", None)]
    assert parse_mounts(None) == []


@pytest.mark.parametrize("mounts, mount_map, opts, said", [
    (["d"], {"d": "../etc"}, None, "'..'"),
    (["d"], {"d": "/home/work/../../etc"}, None, "'..'"),
    (["d"], {"d": "/etc"}, None, "system folder"),
    (["d"], {"d": "/usr/local/d"}, None, "system folder"),
    (["d"], {"d": "/opt/bai/lib"}, None, "system folder"),
    (["d"], {"d": "/home/work"}, None, "work dir"),
    (["d"], {"d": "/"}, None, "work dir"),
    (["d"], {"d": "/home"}, None, "work dir"),
    (["d"], {"d": ".bai"}, None, "state folder"),
    ([".bai"], None, None, "state folder"),
    (["d", "e"], {"d": "x", "e": "x/y"}, None, "one inside the other"),
    (["d", "e"], {"e": "d"}, None, "one inside the other"),
    ([".."], None, None, "invalid folder name"),
    (["a/b"], None, None, "invalid folder name"),
    ([""], None, None, "invalid folder name"),
    ([3], None, None, "invalid folder name"),
    ("d", None, None, "must be a list"),
    (["d"], {"d": 5}, None, "must be a string"),
    (["d"], {"d": "x\0y"}, None, "invalid mount path"),
    (["d"], None, {"d": {"permission": "rwx"}}, "use ro or rw"),
    (["d"], {"d": "x:rw"}, {"d": {"permission": "ro"}}, "use ro or rw"),
    ([f"f{i}" for i in range(65)], None, None, "at most 64"),
])
def test_bad_requests_are_refused_with_a_reason(mounts, mount_map, opts, said) -> None:
    with pytest.raises(InvalidAPIParameters, match=said):
        parse_mounts(mounts, mount_map, opts)


@pytest.mark.parametrize("relpath, bad", [
    ("u/data", False), ("data", False), ("", True), ("/data", True), ("a/../b", True),
    ("a//b", True), ("./a", True), ("a/", True), (None, True), ("a\0", True)])
def test_relpath_problem(relpath, bad) -> None:
    assert (relpath_problem(relpath) is not None) is bad
