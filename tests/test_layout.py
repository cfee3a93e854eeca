"""The floor plan: no import cycle between the package's modules, no module much over 400 lines without saying why,
and no module-level import of a heavy or optional dependency by the modules that `vmae --help` and config reading
load."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("shards", "pipeline", "model", "tools")


def package_modules() -> dict[str, Path]:
    modules = {}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            name = "vmae." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def module_level_imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports when it is imported (not those imported inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else ():
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module:
                found.add(sub.module)
                found.update(f"{sub.module}.{a.name}" for a in sub.names)
    return {name for name in found if name in known}


def test_no_import_cycle():
    modules = package_modules()
    graph = {name: module_level_imports(path, set(modules)) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(name):] + [name]))
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, trail + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_modules_stay_small_or_say_why():
    long = [f"{path.relative_to(ROOT)} ({n} lines)" for path in package_modules().values()
            if (n := len(path.read_text().splitlines())) > 420 and "lines" not in path.read_text()[:600]]
    assert not long, f"split these by job, or say in their first lines why they are long: {long}"


def test_help_and_config_load_no_heavy_dependency():
    code = ("import sys, vmae.tools.cli, vmae.tools.config; "
            "print(sorted(m for m in ('torch', 'deepspeed', 'nvidia.dali', 'av', 'torchcodec', 'ray', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
