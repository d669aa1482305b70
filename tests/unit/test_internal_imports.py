"""Every ``from bai... import name`` in the package names something that exists, including the
imports inside functions (taken lazily, for start-up time), which no import of a module runs:
a module removed or renamed by one change and still imported lazily by another fails here."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "bai"


def test_every_internal_import_resolves():
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == "bai"):
                continue
            where = f"{path.relative_to(SRC.parent)}:{node.lineno}"
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                missing.append(f"{where}: {node.module} ({e})")
                continue
            for alias in node.names:
                if alias.name == "*" or hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    missing.append(f"{where}: {node.module}.{alias.name}")
    assert not missing, "imports of things that do not exist:\n" + "\n".join(missing)
