"""Benchmark: storage folders. Upload and download of a big file through the CLI against ``cp``
of the same file on the same disk, with the memory of the client and the daemons; and the first
page of ``vfolder ls`` in a folder of many files.

    python bench/vfolder.py [--size-mib 1024] [--files 100000] [--runs 10] [--rounds 3]
                            [--before OTHER_CHECKOUT/src] [--skip-listing]

One embedded stack (``backend.ai server start``, process runtime) in a private HOME; the test
file, the copies and the storage host all live under that HOME (one disk). Bytes go client ->
manager (the storage endpoint is the manager's) -> the folder; the agent is not on the path (its
RSS is shown to say so). Memory: the highest RSS seen every 50 ms while a transfer runs. The
same commands with a 1-byte file give the fixed cost of a command (start-up, sign-in, the
ticket). Clients compared round by round: the express path, the click path
(``BAI_CLI_EXPRESS=0``) and, with ``--before``, another checkout's CLI.
Targets (issue 14): transfers >= 70 % of cp's throughput in constant memory; first page of
``ls`` over 100,000 files <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

from harness import CLI, EmbeddedStack, line, print_conditions, rss_mb

MiB = 1024 * 1024


class PeakRss:
    """The highest RSS (MB) of some processes while the block runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids, self.peak = dict(pids), {k: 0.0 for k in pids}
        self._stop = threading.Event()

    def add(self, name: str, pid: int) -> None:
        self.pids[name], self.peak[name] = pid, 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in list(self.pids.items()):
                try:
                    self.peak[name] = max(self.peak[name], rss_mb(pid))
                except OSError:
                    pass
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def timed_cli(st: EmbeddedStack, peak: PeakRss | None, *args: str,
              env: dict[str, str] | None = None) -> float:
    os.sync()  # every timed command starts without a backlog of dirty pages (as cp does)
    t0 = time.perf_counter()
    proc = subprocess.Popen([CLI, *args], env={**st.env, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if peak is not None:
        peak.add("client", proc.pid)
    out, err = proc.communicate()
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"backend.ai {' '.join(args)}: {out}{err}")
    return took


def write_file(path: Path, size: int) -> None:
    # fresh random bytes in every block: with one 4 MiB block repeated, copies of the file
    # (the CLI's download above all) ran 2-10x slower at random on this VM
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(os.urandom(min(left, 4 * MiB)))
            left -= 4 * MiB
        f.flush()
        os.fsync(f.fileno())


def clients(before: str | None) -> dict[str, dict[str, str]]:
    """The CLI variants compared, by the environment each runs with: this checkout's express
    path, its click path (``BAI_CLI_EXPRESS=0``: same transfer code, click + asyncio + httpx
    imported), and optionally another checkout's ``src`` (``--before``) on PYTHONPATH."""
    out = {"express": {}, "click path": {"BAI_CLI_EXPRESS": "0"}}
    if before:
        out["before"] = {"PYTHONPATH": str(Path(before).resolve())}
    return out


def transfers(st: EmbeddedStack, size_mib: int, rounds: int, before: str | None) -> None:
    """Rounds of: cp, then each client's upload and download of the same file, alternating,
    so that every figure of a round met the same load; best and median of the rounds."""
    work = st.home / "work"
    work.mkdir()
    src = work / "big.bin"
    write_file(src, size_mib * MiB)
    st.cli("vfolder", "create", "bench")
    daemons = {"manager": st.pid("manager"), "agent": st.pid("agent")}
    idle = {k: rss_mb(p) for k, p in daemons.items()}
    variants = clients(before)
    cp: list[float] = []
    up: dict[str, list[float]] = {v: [] for v in variants}
    down: dict[str, list[float]] = {v: [] for v in variants}
    fixed: dict[str, list[float]] = {v: [] for v in variants}
    same: dict[str, bool] = {}
    peaks: dict[str, dict[str, float]] = {}
    (work / "one.bin").write_bytes(b"1")
    for r in range(rounds):
        os.sync()
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(work / "copy.bin")], check=True)
        cp.append(time.perf_counter() - t0)
        (work / "copy.bin").unlink()
        for v, env in variants.items():
            with PeakRss(daemons) as up_peak:
                up[v].append(timed_cli(st, up_peak, "vfolder", "upload", "bench", str(src),
                                       env=env))
            dl = work / f"dl-{r}-{v.replace(' ', '-')}"
            dl.mkdir()
            with PeakRss(daemons) as down_peak:
                down[v].append(timed_cli(st, down_peak, "vfolder", "download", "bench",
                                         "big.bin", "-b", str(dl), env=env))
            if v not in same:
                same[v] = subprocess.run(["cmp", str(src), str(dl / "big.bin")]).returncode == 0
                peaks[v] = {"upload client": up_peak.peak["client"],
                            "download client": down_peak.peak["client"],
                            "manager": max(up_peak.peak["manager"], down_peak.peak["manager"])}
            (dl / "big.bin").unlink()
            # the next upload makes a new file (freeing a replaced GiB would be timed in it)
            st.cli("vfolder", "rm", "bench", "big.bin")
            # the command's fixed cost (start-up, sign-in, the ticket): the same with one byte
            fixed[v].append(timed_cli(st, None, "vfolder", "upload", "bench",
                                      str(work / "one.bin"), env=env))
            one = dl / "one"
            one.mkdir()
            fixed[v].append(timed_cli(st, None, "vfolder", "download", "bench", "one.bin",
                                      "-b", str(one), env=env))
    cp_best = size_mib / min(cp)
    print(f"{rounds} rounds of {size_mib} MiB; in each: cp, then each client's upload and "
          "download (alternating)")
    print(f"cp (same disk)                    best {cp_best:6.0f} MiB/s  median "
          f"{size_mib / statistics.median(cp):6.0f} MiB/s")
    for v in variants:
        for what, times in (("upload", up[v]), ("download", down[v])):
            # each round's own ratio to that round's cp: the load moved between rounds
            ratios = [cp[i] / times[i] for i in range(rounds)]
            print(f"{v:<10} {what:<8}  best {size_mib / min(times):6.0f} MiB/s  "
                  f"ratio to cp: median {statistics.median(ratios):4.0%}  best "
                  f"{max(ratios):4.0%}  target >= 70 %")
        print(f"{v:<10} fixed cost of a command (1 byte up/down): median "
              f"{statistics.median(fixed[v]) * 1000:4.0f} ms; byte for byte: {same[v]}; "
              f"peak RSS client {peaks[v]['upload client']:.0f}/{peaks[v]['download client']:.0f}"
              f" MB (up/down), manager {peaks[v]['manager']:.0f} MB (idle "
              f"{idle['manager']:.0f})")
    src.unlink()


async def api_first_page(st: EmbeddedStack, runs: int, order: str) -> list[float]:
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.client.vfolder import VFolderAPI

    keys = st.keys()["admin"]
    cfg = ClientConfig(endpoints=(st.endpoint,), access_key=keys["access_key"],
                       secret_key=keys["secret_key"])
    out = []
    async with Connection(cfg) as conn:
        api = VFolderAPI(conn)
        await api.files("many", ".", limit=1000)  # a warm connection, as a client keeps one
        for _ in range(runs):
            t0 = time.perf_counter()
            page = await api.files("many", ".", limit=1000, order=order)
            out.append((time.perf_counter() - t0) * 1000)
        assert len(page["items"]) == 1000 or page["total"] < 1000
    return out


def listing(st: EmbeddedStack, files: int, runs: int) -> None:
    info = json.loads(st.cli("--output", "json", "vfolder", "create", "many").stdout)
    folder = st.state / "vfolders" / info["id"][:2] / info["id"]
    for i in range(files):
        os.close(os.open(folder / f"file-{i:07d}.txt", os.O_WRONLY | os.O_CREAT, 0o644))
    api = asyncio.run(api_first_page(st, runs, "name"))
    unsorted = asyncio.run(api_first_page(st, runs, "none"))
    cli, cli_u = [], []
    for _ in range(runs):
        for args, out in (((), cli), (("-U",), cli_u)):
            t0 = time.perf_counter()
            st.cli("vfolder", "ls", "many", "--limit", "1000", *args)
            out.append((time.perf_counter() - t0) * 1000)
    print(line(f"vfolder ls first page (API, {files:,} files, by name)", api,
               target="<= 100 ms"))
    print(line("vfolder ls first page (API, -U unsorted)", unsorted, target="<= 100 ms"))
    print(line("vfolder ls first page (whole CLI command)", cli))
    print(line("vfolder ls -U first page (whole CLI command)", cli_u))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the transferred file")
    ap.add_argument("--files", type=int, default=100_000, help="files in the listed folder")
    ap.add_argument("--runs", type=int, default=10, help="listings timed")
    ap.add_argument("--rounds", type=int, default=3, help="transfer rounds (cp + each client)")
    ap.add_argument("--before", default=None, metavar="SRC",
                    help="also time the CLI of another checkout: its src folder (PYTHONPATH)")
    ap.add_argument("--skip-listing", action="store_true", help="transfers only")
    a = ap.parse_args()
    print_conditions("storage folders", size_mib=a.size_mib, files=a.files, runs=a.runs,
                     runtime="process", path="CLI -> manager (storage endpoint) -> folder")
    with EmbeddedStack() as st:
        transfers(st, a.size_mib, a.rounds, a.before)
        if not a.skip_listing:
            listing(st, a.files, a.runs)


if __name__ == "__main__":
    main()
