"""Outbound network per policy (``allow_outbound``), attacked as a normal user of the embedded
stack: a session of a policy that allows it reaches a server outside this host's network
namespace (one made here with ``ip netns``, joined to the host by a veth pair: no address
outside this machine is ever tried); a session of the default policy reaches nothing; and even
the allowed session never reaches the host itself: the manager's and agent's ports on
127.0.0.1, or a listener on every host address (the veth's host side included). The attack is
shared with the docker runtime's (``test_docker_isolation.py``): ``attacks.py``.
"""

from __future__ import annotations

import os
import shutil

import pytest
from attacks import assert_outbound_only_where_allowed, outside_server

from stacks import Stack

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("bwrap", "slirp4netns", "ip")),
    reason="outbound network needs root, bubblewrap, slirp4netns and ip (scripts/install.sh); "
           "server start names the gap")


def test_outbound_network_only_where_the_policy_allows_it_and_never_to_the_host(
        stack: Stack) -> None:
    with outside_server() as outside:
        assert_outbound_only_where_allowed(stack, outside)


def test_slirp_waits_for_a_sandbox_slow_to_set_up_its_loopback(tmp_path) -> None:
    # bwrap says its child's pid before the child adds 127.0.0.1 to lo (an add that must create
    # it); slirp4netns --configure brings lo up and the kernel adds 127.0.0.1 itself. Under load
    # the child came second and died ("loopback: Failed RTM_NEWADDR": CI, one session in
    # ~12 full runs). Here a child that is slow on purpose, adding the address as bwrap does.
    import subprocess
    import threading

    from bai.agent.backends import outbound

    found = outbound.tools()
    if found is None or not shutil.which("unshare"):
        pytest.skip("needs slirp4netns, nsenter, ip and unshare")
    go, ok = tmp_path / "go", tmp_path / "ok"
    child = subprocess.Popen(
        ["unshare", "--net", "sh", "-c",
         f"while [ ! -e {go} ]; do sleep 0.01; done; "
         f"ip addr add 127.0.0.1/8 dev lo || exit 3; ip link set lo up; touch {ok}; "
         "exec sleep 60"],
        stderr=subprocess.PIPE)
    own = os.readlink("/proc/self/ns/net")
    for _ in range(600):  # (bwrap's child is in its namespace from the start; unshare's not)
        if child.poll() is not None or os.readlink(f"/proc/{child.pid}/ns/net") != own:
            break
        threading.Event().wait(0.01)
    done: dict = {}

    def attach() -> None:
        try:
            done["slirp"] = outbound.attach(found, child.pid, tmp_path / "slirp.out", timeout=30)
        except Exception as e:  # noqa: BLE001 - the test reads it
            done["error"] = e

    t = threading.Thread(target=attach)
    t.start()
    try:
        t.join(0.5)  # (what attach did meanwhile, the child had not set up its loopback yet)
        go.touch()
        t.join(30)
        assert "error" not in done, done
        for _ in range(600):
            if ok.exists() or child.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert ok.exists(), f"the sandbox's loopback set-up failed: {child.stderr.read1()!r}"
    finally:
        child.kill()
        child.wait()
        t.join(30)
        if "slirp" in done:
            outbound.stop(done["slirp"].pid)
