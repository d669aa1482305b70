"""Benchmark: storage folders. Upload and download of a big file through the CLI against ``cp``
of the same file on the same disk, with the memory of the client and the daemons; and the first
page of ``vfolder ls`` in a folder of many files.

    python bench/vfolder.py [--size-mib 1024] [--files 100000] [--runs 10]

One embedded stack (``backend.ai server start``, process runtime) in a private HOME; the test
file, the copies and the storage host all live under that HOME (one disk). Bytes go client ->
manager (the storage endpoint is the manager's) -> the folder; the agent is not on the path (its
RSS is shown to say so). Memory: the highest RSS seen every 50 ms while a transfer runs. The
same commands with a 1-byte file give the fixed cost of a command (start-up, sign-in, the
ticket), and the throughput net of it says how fast the bytes themselves move.
Targets (issue 14): transfers >= 70 % of cp's throughput in constant memory; first page of
``ls`` over 100,000 files <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def timed_cli(st: EmbeddedStack, peak: PeakRss, *args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen([CLI, *args], env=st.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak.add("client", proc.pid)
    out, err = proc.communicate()
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"backend.ai {' '.join(args)}: {out}{err}")
    return took


def write_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())


def transfers(st: EmbeddedStack, size_mib: int) -> None:
    work = st.home / "work"
    work.mkdir()
    src = work / "big.bin"
    write_file(src, size_mib * MiB)
    cp_times = []
    for i in range(2):
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(work / f"copy{i}.bin")], check=True)
        cp_times.append(time.perf_counter() - t0)
        (work / f"copy{i}.bin").unlink()
    cp = size_mib / min(cp_times)
    st.cli("vfolder", "create", "bench")
    daemons = {"manager": st.pid("manager"), "agent": st.pid("agent")}
    idle = {k: rss_mb(p) for k, p in daemons.items()}
    with PeakRss(daemons) as up_peak:
        up = size_mib / timed_cli(st, up_peak, "vfolder", "upload", "bench", str(src))
    dl = work / "dl"
    dl.mkdir()
    with PeakRss(daemons) as down_peak:
        down = size_mib / timed_cli(st, down_peak, "vfolder", "download", "bench", "big.bin",
                                    "-b", str(dl))
    same = subprocess.run(["cmp", str(src), str(dl / "big.bin")]).returncode == 0
    # the command's fixed cost (start-up, sign-in, the ticket): the same with one byte
    (work / "one.bin").write_bytes(b"1")
    fixed_up, fixed_down = [], []
    with PeakRss({}) as none:
        for i in range(3):
            fixed_up.append(timed_cli(st, none, "vfolder", "upload", "bench", str(work / "one.bin")))
            (dl / str(i)).mkdir()
            fixed_down.append(timed_cli(st, none, "vfolder", "download", "bench", "one.bin", "-b",
                                        str(dl / str(i))))
    t_up, t_down = size_mib / up, size_mib / down
    print(f"cp of {size_mib} MiB (same disk, best of 2)         {cp:8.0f} MiB/s")
    print(f"backend.ai vfolder upload                 {up:8.0f} MiB/s  "
          f"{up / cp:5.0%} of cp  target >= 70 %")
    print(f"backend.ai vfolder download               {down:8.0f} MiB/s  "
          f"{down / cp:5.0%} of cp  target >= 70 %  (byte for byte: {same})")
    for what, took, fixed in (("upload", t_up, min(fixed_up)),
                              ("download", t_down, min(fixed_down))):
        net = size_mib / (took - fixed) if took > fixed else float("inf")
        print(f"  {what:<8} net of the command's fixed {fixed * 1000:4.0f} ms (1 byte, best of "
              f"3): {net:6.0f} MiB/s  {net / cp:5.0%} of cp")
    for what, peak in (("upload", up_peak.peak), ("download", down_peak.peak)):
        print(f"peak RSS during {what:<8}: client {peak['client']:.0f} MB, manager "
              f"{peak['manager']:.0f} MB (idle {idle['manager']:.0f}), agent "
              f"{peak['agent']:.0f} MB (idle {idle['agent']:.0f}; not on the path)")
    for p in (src, dl / "big.bin"):
        p.unlink()


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
    a = ap.parse_args()
    print_conditions("storage folders", size_mib=a.size_mib, files=a.files, runs=a.runs,
                     runtime="process", path="CLI -> manager (storage endpoint) -> folder")
    with EmbeddedStack() as st:
        transfers(st, a.size_mib)
        listing(st, a.files, a.runs)


if __name__ == "__main__":
    main()
