"""What the code imports is what pyproject declares: the client's modules only the client's
dependencies (click, rich), everything else only what the ``server`` extra adds."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "bai"
#: import name -> distribution, where they differ
DISTRIBUTION = {"graphql": "graphql-core", "pydantic_settings": "pydantic-settings",
                "prometheus_client": "prometheus-client", "sqlalchemy": "sqlalchemy"}
#: the parts a client-only install runs (bai.common.settings is the daemons' settings base)
CLIENT_SIDE = ("client", "common", "kernel")


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}

    return names(project["dependencies"]), names(project["optional-dependencies"]["server"])


def optional_imports(tree: ast.AST) -> set[int]:
    """The import statements in a ``try`` whose handler catches ImportError: the code runs
    without them (e.g. the SDK's event loop takes uvloop where the server extra brought it)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def third_party_imports(path: Path) -> set[str]:
    out = set()
    tree = ast.parse(path.read_text())
    optional = optional_imports(tree)
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        else:
            continue
        for mod in mods:
            top = mod.split(".")[0]
            if top != "bai" and top not in sys.stdlib_module_names:
                out.add(DISTRIBUTION.get(top, top).lower().replace("_", "-"))
    return out


SERVER_ONLY = (Path("common/settings.py"), Path("common/rawstream.py"),
               Path("common/opensockets.py"))


def test_every_import_is_declared():
    core, server = declared()
    missing = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "testing":  # test helpers shipped with the package: the test extra
            continue
        # daemon-only modules of bai.common: the settings base, and rawstream's server end
        # (take_over imports aiohttp inside the function; only the manager calls it), and the
        # daemons' registry of open WebSockets
        client_side = rel.parts[0] in CLIENT_SIDE and rel not in SERVER_ONLY
        allowed = core if client_side else core | server
        extra = third_party_imports(path) - allowed
        if extra:
            missing[str(rel)] = sorted(extra)
    assert not missing, f"imports not declared for that part (client: {sorted(core)}): {missing}"
