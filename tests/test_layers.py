"""The packages import each other only downwards (docs/design.md, "Layers"): a provider
never imports the engine, the daemon never imports the CLI, the repository never imports
a provider. An import against these layers fails here, with the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import hypersdk

SRC = Path(hypersdk.__file__).parent

# package -> the hypersdk packages it may import (besides itself). Top-level modules
# (errors, cmdline, processes) count as packages of their own.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "cmdline": set(),
    "processes": set(),  # stops a process by pid: used by providers, the lab and the rigs
    "nbd": {"errors"},
    "repository": {"errors"},
    "state": {"errors", "repository"},
    "providers": {"errors", "nbd", "processes"},
    "engine": {"errors", "providers", "repository", "state"},
    "access": {"errors", "nbd", "processes", "repository"},  # instant access over NBD
    "lab": {"errors", "processes"},
    # "client": hyperctl policy talks to the daemon through the SDK
    "cli": {
        "errors",
        "cmdline",
        "engine",
        "providers",
        "repository",
        "state",
        "lab",
        "access",
        "client",
    },
    "daemon": {"errors", "cmdline", "engine", "providers", "repository", "state", "access"},
    # a fleet worker runs the daemon's jobs (daemon.runner.JobWork) with its protocol
    # (daemon.fleet); the daemon never imports it
    "fleet": {"errors", "cmdline", "daemon", "engine", "providers", "repository", "state"},
    "client": set(),  # the SDK stays light: nothing of the product below it
}


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported hypersdk package) for every import in the file, also the ones
    inside functions (lazy imports count as much as the others)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "hypersdk" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def test_every_package_has_a_rule() -> None:
    found = {_package(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert found <= set(ALLOWED), f"add a rule for {sorted(found - set(ALLOWED))}"


def test_imports_follow_the_layers() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "__init__.py":
            continue  # the package root re-exports the SDK client lazily
        here = _package(path)
        for line, target in _imports(path):
            if target != here and target not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
