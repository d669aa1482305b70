"""Judges what scripts/gpu-check.sh saw (the pure part of the device check, unit-tested in
tests/unit/test_gpu_check.py). Usage: ``python3 verdict.py halves TOTAL_GIB OUT1 OUT2`` prints
CHECK lines and exits 1 when a check fails."""

from __future__ import annotations

import sys


def parse_probe(text: str) -> dict[str, object]:
    """The findings of one probe_memory.py run (its output, among other lines)."""
    found: dict[str, object] = {"device": "", "allocated": None, "refused": None}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "DEVICE":
            found["device"] = rest
        elif word == "ALLOCATED" and rest.isdigit():
            found["allocated"] = int(rest)
        elif word == "REFUSED":
            found["refused"] = rest or "refused"
        elif word == "NOT-REFUSED":
            found["refused"] = ""
    return found


def judge_halves(total_gib: float, outputs: list[str]) -> list[tuple[bool, str]]:
    """Two ``cuda.shares=2`` sessions at once: each refused by the enforcement at or below its
    half (plus 1 GiB of slack for the context), and neither starved by the other (each got at
    least half of its half)."""
    half = total_gib / 2
    out = []
    for i, text in enumerate(outputs, 1):
        p = parse_probe(text)
        got, refused = p["allocated"], p["refused"]
        ok = isinstance(got, int) and bool(refused) and half / 2 <= got <= half + 1
        out.append((ok, f"half-session {i}: allocated {got} GiB of a {half:.0f} GiB half, "
                        f"refused: {refused or 'NO'}"))
    return out


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "halves":
        texts = [open(p, errors="replace").read() for p in argv[2:]]
        results = judge_halves(float(argv[1]), texts)
        for ok, what in results:
            print(f"CHECK {'PASS' if ok else 'FAIL'} {what}")
        return 0 if all(ok for ok, _ in results) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
