"""Session files through the CLI, as the normal user: bounded, streamed, all or nothing.

The manager's ``session_file_max`` (1 GiB by default) counts apparent size, so a sparse file
that takes no disk is measured by what it claims. Memory of the manager and the agent is
sampled from /proc while a ~1 GiB file streams through them.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from stacks import Stack, start_stack

SMALL = ["-r", "cpu=0.1", "-r", "mem=64m"]
MiB = 1024**2


@pytest.fixture(scope="module")
def xfer():
    st = start_stack("cpu=4", "mem=4g")
    st.cli("start", "-t", "xfer", *SMALL, "python", user=True)
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


def in_session(st: Stack, code: str) -> str:
    return st.cli("run", "-t", "xfer", "-c", code, "python", user=True).stdout


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def pid_of(st: Stack, which: str) -> int:
    return int((st.state / f"{which}.pid").read_text().strip())


def test_a_10_gib_sparse_file_is_refused_in_one_line(xfer, tmp_path):
    in_session(xfer, "open('huge.bin', 'wb').truncate(10 * 2**30)")
    proc = xfer.cli("session", "download", "xfer", "huge.bin", "--dest", str(tmp_path),
                    user=True, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "session_file_max" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_1_gib_sparse_file_streams_in_constant_memory(xfer, tmp_path):
    size = 1024 * MiB - 4 * MiB
    in_session(xfer, f"f = open('big.bin', 'wb'); f.truncate({size}); f.seek(-3, 2); "
                     "f.write(b'end'); f.close()")
    pids = {w: pid_of(xfer, w) for w in ("manager", "agent")}
    idle = {w: rss(p) for w, p in pids.items()}
    peak = dict(idle)
    done = threading.Event()

    def sample():
        while not done.is_set():
            for w, p in pids.items():
                peak[w] = max(peak[w], rss(p))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        xfer.cli("session", "download", "xfer", "big.bin", "--dest", str(tmp_path), user=True,
                 timeout=600)
    finally:
        done.set()
        sampler.join()
    got = tmp_path / "big.bin"
    assert got.stat().st_size == size
    with open(got, "rb") as f:
        f.seek(-3, 2)
        assert f.read() == b"end"
    got.unlink()
    for w in pids:
        assert peak[w] - idle[w] < 100 * MiB, (w, idle[w], peak[w])
    agents = xfer.cli("--output", "json", "admin", "agent", "list").stdout
    assert '"ALIVE"' in agents and '"LOST"' not in agents


def test_a_folder_comes_whole_and_links_stay_links(xfer, tmp_path):
    in_session(xfer, "import os; os.makedirs('out/sub', exist_ok=True); "
                     "open('out/sub/a.txt', 'w').write('A'); "
                     "os.path.lexists('out/pw') or os.symlink('/etc/passwd', 'out/pw')")
    xfer.cli("session", "download", "xfer", "out", "--dest", str(tmp_path), user=True)
    assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "A"
    # a link that leads out of the destination is left out, never followed
    assert not (tmp_path / "out" / "pw").exists()


def test_an_upload_past_the_limit_leaves_nothing(xfer, tmp_path):
    ok = tmp_path / "up-ok.txt"
    ok.write_text("fine")
    with open(tmp_path / "up-big.bin", "wb") as f:
        f.truncate(1024 * MiB + MiB)
    proc = xfer.cli("session", "upload", "xfer", "up-ok.txt", "up-big.bin", user=True,
                    check=False, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "session_file_max" in lines[0], proc.stderr
    listing = in_session(xfer, "import os; print(sorted(os.listdir('.')))")
    assert "up-ok.txt" not in listing and "up-big" not in listing
    assert "bai-upload" not in listing
    xfer.cli("session", "upload", "xfer", "up-ok.txt", user=True, cwd=tmp_path)
    assert in_session(xfer, "print(open('up-ok.txt').read())") == "fine\n"


def test_a_user_cannot_reach_files_of_another_users_session(xfer, tmp_path):
    xfer.cli("start", "-t", "adm-files", *SMALL, "python")
    try:
        xfer.cli("run", "-t", "adm-files", "-c", "open('secret.txt','w').write('s3cret')",
                 "python")
        down = xfer.cli("session", "download", "adm-files", "secret.txt", "--dest",
                        str(tmp_path), user=True, check=False)
        assert down.returncode != 0 and not (tmp_path / "secret.txt").exists(), down.stdout
        (tmp_path / "planted.txt").write_text("planted")
        up = xfer.cli("session", "upload", "adm-files", "planted.txt", user=True, check=False,
                      cwd=tmp_path)
        assert up.returncode != 0, up.stdout
        rm = xfer.cli("rm", "adm-files", user=True, check=False)
        listing = xfer.cli("run", "-t", "adm-files", "-c",
                           "import os; print(sorted(os.listdir('.')))", "python").stdout
        assert "secret.txt" in listing and "planted.txt" not in listing, (rm.stdout, listing)
    finally:
        xfer.cli("rm", "adm-files", check=False)
