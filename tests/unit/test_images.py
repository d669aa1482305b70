"""bai.agent.images: where debootstrap downloads from, and the truthful image name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bai.agent.images import (
    RECIPES,
    BuildError,
    _rootfs_facts,
    debian_mirror,
    image_name,
    registration,
)


def test_mirror_from_deb822_sources_skips_security(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("BAI_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert debian_mirror("bookworm", etc=tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_list_and_override(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("BAI_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://apt.example/debian bookworm main\n")
    assert debian_mirror("bookworm", etc=tmp_path) == "http://apt.example/debian"
    assert debian_mirror("trixie", etc=tmp_path) == "http://deb.debian.org/debian"
    monkeypatch.setenv("BAI_DEBIAN_MIRROR", "http://local.example/debian")
    assert debian_mirror("bookworm", etc=tmp_path) == "http://local.example/debian"


def test_name_tells_what_is_inside(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    for name in ("python3", "python3.11", "python3.9", "python3.11-config"):
        (tmp_path / "usr" / "bin" / name).touch()
    (tmp_path / "etc" / "debian_version").write_text("12.10\n")
    facts = _rootfs_facts(tmp_path)
    assert facts == {"python": "3.11", "debian": "12"}
    meta = {**facts, "sha256": "x", "suite": "bookworm", "architecture": "x86_64"}
    assert image_name(meta) == "python:3.11-debian12"
    record = registration(RECIPES[0], meta)
    assert record["aliases"] == ["python"] and record["runtimes"] == "docker"
    assert record["min_slots"]["mem"] == str(64 * 2**20)
    assert record["labels"]["ai.backend.resource.min.cpu"] == "0.1"


def test_a_root_without_python_or_with_sid_is_refused(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    with pytest.raises(BuildError, match="no python3"):
        _rootfs_facts(tmp_path)
    (tmp_path / "usr" / "bin" / "python3.12").touch()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "debian_version").write_text("trixie/sid\n")
    with pytest.raises(BuildError, match="testing/sid"):
        _rootfs_facts(tmp_path)
