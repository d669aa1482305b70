"""The pure part of scripts/gpu-check.sh (its verdict on the half-GPU sessions) and the
script's shell syntax: the device check itself runs only on a machine with a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("verdict", ROOT / "scripts/gpu/verdict.py")
verdict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verdict)


def probe(n: int, refused: bool = True) -> str:
    return ("DEVICE NVIDIA H200\nVISIBLE GPU-1 0=71680M\n"
            f"ALLOCATED {n}\n" + ("REFUSED CUDA out of memory\n" if refused else "NOT-REFUSED\n"))


def test_probe_output_is_read() -> None:
    assert verdict.parse_probe("noise\n" + probe(69)) == {
        "device": "NVIDIA H200", "allocated": 69, "refused": "CUDA out of memory"}
    assert verdict.parse_probe(probe(140, refused=False))["refused"] == ""


def test_halves_pass_only_when_each_is_refused_within_its_half() -> None:
    ok = verdict.judge_halves(140, [probe(69), probe(70)])
    assert [r for r, _ in ok] == [True, True]
    # one took the whole GPU (no enforcement) and starved the other
    bad = verdict.judge_halves(140, [probe(139), probe(1)])
    assert [r for r, _ in bad] == [False, False]
    assert not verdict.judge_halves(140, [probe(60, refused=False), probe(69)])[0][0]
    assert not verdict.judge_halves(140, ["session failed\n", probe(69)])[0][0]


def test_scripts_parse() -> None:
    for name in ("gpu-check.sh", "gpu-wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)], check=True)
