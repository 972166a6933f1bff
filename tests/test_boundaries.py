"""The import boundary: shared <- server/client <- simulation, checked on every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "server", "client", "simulation")
ALLOWED: dict[str, set[str]] = {
    "shared": {"shared"},
    "server": {"shared", "server"},
    "client": {"shared", "client"},
    "simulation": {"shared", "server", "client", "simulation"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of our packages that a module imports (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: use absolute imports, not relative ones")
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"package {package} has no modules"
    violations = [
        f"{m.relative_to(ROOT)} imports {sorted(imported_packages(m) - ALLOWED[package])}"
        for m in modules
        if imported_packages(m) - ALLOWED[package]
    ]
    assert not violations, "\n".join(violations)


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "from simulation.run import main\nimport server.embedding.catalogue_embedding\n", encoding="utf-8"
    )
    assert imported_packages(module) == {"simulation", "server"}
