"""The runner started as root with ``--user`` and ``--state-dir`` (how the docker runtime starts
it): its state lives in a folder the kernel cannot write, and nothing of the kernel runs as root
or with a capability."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_kernel_runner import PYTHONS, SRC, Client

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting as root needs root")


@pytest.fixture
def folders():
    # not under pytest's tmp_path: its folders are root's 0700, which the kernel's uid cannot pass
    top = Path(tempfile.mkdtemp(prefix="bai-runner-user-"))
    os.chmod(top, 0o755)
    work, state = top / "work", top / "state"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    state.mkdir(mode=0o700)
    yield work, state
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("python", PYTHONS[:1])
def test_a_runner_gives_up_root_before_the_kernel_runs(folders, python: str) -> None:
    work, state = folders
    (state / "runner.json").write_text(json.dumps({"bootstrap_script": "id -u > boot.txt"}))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": SRC, "HOME": str(work), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [python, "-m", "bai.kernel", "--workdir", str(work), "--state-dir", str(state),
         "--user", f"{NOBODY}:{NOBODY}"],
        env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        sock = state / "runner.sock"
        for _ in range(500):
            if sock.exists() or proc.poll() is not None:
                break
            time.sleep(0.02)
        client = Client(sock)
        for _ in range(500):
            client.send({"op": "ping"})
            if client.receive()["ready"]:
                break
            time.sleep(0.02)
        frames = client.execute(mode="query", code=(
            "import os\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
            "print(os.getresuid(), os.getresgid(), os.getgroups())\n"
            "print(int(status['CapEff'], 16), int(status['CapPrm'], 16))\n"
            "for path in (%r, %r):\n"
            "    try:\n"
            "        open(path, 'a')\n"
            "        print('wrote', path)\n"
            "    except OSError as e:\n"
            "        print(e.errno)\n" % (str(state / "kernel.log"), str(state / "planted"))))
        lines = "".join(d for f in frames for k, d in f["console"] if k == "stdout").splitlines()
        ids = f"({NOBODY}, {NOBODY}, {NOBODY})"
        assert lines[0] == f"{ids} {ids} []", frames
        assert lines[1] == "0 0"  # no capability, effective or permitted
        assert lines[2:] == ["13", "13"]  # EACCES: the state folder is not the kernel's
        assert (work / "boot.txt").read_text().strip() == str(NOBODY)  # bootstrap too
        assert not (work / ".bai").exists()  # nothing of the runner's in the work dir
        sock_st = os.lstat(sock)
        assert sock_st.st_uid == 0 and sock_st.st_mode & 0o777 == 0o600
        assert (state / "exit.json").read_text() == ""  # opened ahead, written at the end
        client.send({"op": "execute", "mode": "query", "code": "import os; os._exit(3)"})
        assert proc.wait(timeout=30) == 3
        assert json.loads((state / "exit.json").read_text())["exit_code"] == 3
    finally:
        proc.kill()
        proc.wait()
