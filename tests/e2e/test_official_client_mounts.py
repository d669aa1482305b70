# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""The official Backend.AI CLI 23.9.10, unchanged, mounts storage folders on bai: `run -m`,
`start -m NAME:PATH`, read-only with `:ro`, the folders in `ps -f mounts`, a clear refusal."""

from __future__ import annotations

import os
import shutil

import pytest
from official import requires_official, unique_name

pytestmark = [requires_official, pytest.mark.official_client]


def test_official_client_run_and_start_with_mounts(user):
    folder = unique_name("ofm")
    user("vfolder", "create", folder, "local")
    res = user("run", "--rm", "-m", folder, "-c",
               f"_ = open('{folder}/out.txt', 'w').write('from the official client')",
               "python")
    assert "exit code = 0" in res.stderr
    res = user("run", "--rm", "-m", f"{folder}=/data/in", "-c",
               "print(open('/data/in/out.txt').read())", "python")
    assert res.stdout.strip() == "from the official client"

    name = unique_name("ofm-keep")
    try:
        user("start", "-t", name, "-m", f"{folder}:/data/ro:ro", "python")
        doc = user.session_json(name, fields="name,mounts")
        assert doc["mounts"] == [folder]
        if shutil.which("bwrap") and os.geteuid() == 0:  # read-only needs the sandbox
            res = user("run", "-t", name, "-c",
                       "import os\ntry:\n    open('/data/ro/x', 'w')\n"
                       "except OSError as e:\n    print(e.strerror)", "python")
            assert res.stdout.strip() == "Read-only file system"
    finally:
        user("rm", name, check=False)

    bad = unique_name("ofm-bad")
    res = user("run", "--rm", "-t", bad, "-m", "no-such-folder", "-c", "1", "python",
               check=False)
    # (the official client's run exits 0 after printing a refused create: its own behaviour)
    assert "No such storage folder" in res.output and "no-such-folder" in res.output
    assert bad not in [r["name"] for r in user.list_json("ps", "--status", "ALL", "--limit",
                                                          "100")["items"]]
