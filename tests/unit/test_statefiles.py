"""The agent reads and writes a runner's files never through a link a session planted
(``bai.agent.statefiles``): a link at the file's name or at the folder is refused, as is a FIFO."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bai.agent import statefiles


@pytest.fixture
def planted(tmp_path: Path):
    secret = tmp_path / "keys.json"
    secret.write_text('{"secret_key": "s3cr3t"}')
    state = tmp_path / "work" / ".bai"
    state.mkdir(parents=True)
    return secret, state


def test_a_log_is_read_from_its_end(planted):
    _, state = planted
    (state / "kernel.log").write_bytes(b"x" * 100 + b"the end")
    assert statefiles.read_tail(state, "kernel.log", 7) == b"the end"
    assert statefiles.read_tail(state, "absent.log", 7) == b""


def test_a_log_planted_as_a_link_reads_as_nothing(planted):
    secret, state = planted
    (state / "kernel.log").symlink_to(secret)
    assert statefiles.read_tail(state, "kernel.log", 1 << 20) == b""
    # a link instead of the folder itself
    other = state.parent / "other"
    other.mkdir()
    (other / "kernel.log").symlink_to(secret)
    os.rename(state, state.parent / "moved")
    state.symlink_to(secret.parent)
    assert statefiles.read_tail(state, "keys.json", 1 << 20) == b""


def test_a_fifo_does_not_block_the_agent(planted):
    _, state = planted
    os.mkfifo(state / "kernel.log")
    assert statefiles.read_tail(state, "kernel.log", 1 << 20) == b""


def test_writing_through_a_planted_link_is_refused(planted):
    secret, state = planted
    (state / "uploaded.json").symlink_to(secret)
    with pytest.raises(OSError):
        statefiles.write_text(state, "uploaded.json", "[]")
    assert "s3cr3t" in secret.read_text()
    (state / "fresh.json").touch()
    statefiles.write_text(state, "fresh.json", '["a.py"]')
    assert (state / "fresh.json").read_text() == '["a.py"]'
