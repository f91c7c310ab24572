"""The layout docs/ARCHITECTURE.md describes: one package per capability, imports in one direction, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "service"

# What each part of `service` may import, besides itself: lower layers only, so no two packages import each other.
MAY_IMPORT: dict[str, set[str]] = {
    "tables": set(),
    "core": set(),
    "simulator": set(),
    "money": {"core", "tables"},
    "tenancy": {"core", "tables", "money"},
    "cascade": {"core", "tables", "money", "tenancy"},
    "reports": {"core", "tables", "money", "tenancy", "cascade"},
    "tasks": {"core", "tables", "money", "tenancy", "cascade", "reports"},
    "jobs": {"core", "tables", "money", "tenancy", "cascade"},
    "runtime": {"core", "tables", "money", "tenancy", "cascade", "reports", "tasks", "jobs"},
    "api": {"core", "tables", "money", "tenancy", "cascade", "reports", "tasks", "jobs", "runtime"},
    "cli": {"core", "tables", "money", "tenancy", "cascade", "reports", "tasks", "jobs", "runtime", "api", "simulator"},
}
MAX_LINES = 450  # "about 400": the few a little over it are named in the README
MAX_TOP_LEVEL_MODULES = 10


def modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "web" not in p.parts)


def part_of(path: Path) -> str:
    rel = path.relative_to(SERVICE)
    return rel.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """The parts of `service` a module imports, at any depth (a lazy import inside a function counts too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "service" and len(parts) > 1 and parts[1] != "__init__":
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_the_layers_below_its_own(path: Path) -> None:
    part = part_of(path)
    if part == "__init__":
        return
    assert part in MAY_IMPORT, f"{part} is a new part of service: give it a row in MAY_IMPORT and ARCHITECTURE.md"
    wrong = imported_parts(path) - MAY_IMPORT[part] - {part}
    assert not wrong, f"{path.relative_to(ROOT)} ({part}) imports {sorted(wrong)}"


def test_no_two_parts_import_each_other() -> None:
    for part, allowed in MAY_IMPORT.items():
        for other in allowed:
            assert part not in MAY_IMPORT[other], f"{part} and {other} may import each other"


@pytest.mark.parametrize("path", sorted(SERVICE.rglob("__init__.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_package_face_holds_no_logic(path: Path) -> None:
    for node in ast.parse(path.read_text()).body:
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_all = isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
        assert is_docstring or is_all or isinstance(node, ast.ImportFrom), f"{path}: {ast.unparse(node)[:80]}"


def test_service_has_few_top_level_modules_beside_its_packages() -> None:
    top = [p.name for p in SERVICE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for package in (p for p in SERVICE.iterdir() if p.is_dir() and p.name not in ("__pycache__",)):
        assert (package / "__init__.py").exists(), f"{package} is a folder without a face"


@pytest.mark.parametrize("folder", ["service", "bench", "tests"])
def test_no_module_is_too_long_to_hold_in_mind(folder: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_only_the_upstream_module_talks_to_the_sdk() -> None:
    talkers = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "anthropic" or n.startswith("anthropic.") for n in names):
                talkers.append(str(path.relative_to(ROOT)))
    assert sorted(set(talkers)) == ["service/cascade/upstream.py"]


def test_the_architecture_document_maps_every_package() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for part in MAY_IMPORT:
        path = f"service/{part}/" if (SERVICE / part).is_dir() else f"service/{part}.py"
        assert path in doc, f"docs/ARCHITECTURE.md does not map {path}"
