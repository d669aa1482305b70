"""The README says how to install the official client so that it runs: the same pins as the
script the tests install it with (it does not run at all with yarl 1.17 or newer)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(text: str) -> set[str]:
    return set(re.findall(r"'((?:backend\.ai-client|yarl)[=<>][^']*)'", text))


def test_the_readme_installs_the_official_client_with_the_scripts_pins():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The official client", 1)[1].split("\n## ", 1)[0]
    install = next(ln for ln in section.splitlines() if "pip install" in ln)
    script = (ROOT / "scripts" / "official-client.sh").read_text()
    assert pins(install) == pins(script) == {"backend.ai-client==23.9.10", "yarl<1.17"}
    assert all(w for w in shlex.split(install))  # the line is a command a shell takes
    assert "(#the-official-client)" in readme.split("## The two commands", 1)[0]
