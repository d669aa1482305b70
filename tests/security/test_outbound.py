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
