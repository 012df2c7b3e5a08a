"""The layers of the tree (docs/layout.md), read from the source's imports (every import,
those inside functions included): the application (`proxy.app`) sits on the library and the
library never imports it; the stores import nothing of the layers above them; `shadow`
imports nothing of `proxy`; `metrics` and `config` import nothing of the project but the
names of the two stores."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: what the stores sit under: the dual-write repository, what it is built from, the migration
#: tools and the application (a store that imports one of them depends on the layer above it)
ABOVE_STORES = (
    "proxy.repository", "proxy.mirror", "proxy.deadletters", "proxy.flip_gate",
    "proxy.primary_source", "proxy.connect", "proxy.sqlite_file", "proxy.migrate",
    "proxy.app", "shadow", "metrics",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every module `path` imports, by its absolute name."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # `from proxy import app` imports the module proxy.app
            yield from (f"{base}.{alias.name}" for alias in node.names)


def sources(*packages: str, exclude: str | None = None) -> list[Path]:
    found = []
    for package in packages:
        for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
            if exclude is None or not module_name(path).startswith(exclude):
                found.append(path)
    return found


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted({
        f"{module_name(path)} imports {name}"
        for path in paths for name in imports_of(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    })


def test_the_reader_sees_every_import() -> None:
    """The checks below could not pass by missing what they look for."""
    service = ROOT / "proxy" / "app" / "service.py"
    assert "proxy.repository" in set(imports_of(service))
    # imported inside `run_verify`, not at the top
    assert "proxy.stores.sqlite" in set(imports_of(ROOT / "proxy" / "migrate" / "verify.py"))
    assert "proxy.app.service imports proxy.repository" in offending([service],
                                                                       ("proxy.repository",))


def test_the_library_never_imports_the_application() -> None:
    library = sources("proxy", exclude="proxy.app")
    assert len(library) > 20  # core, stores and migrate were all read
    assert offending(library, ("proxy.app",)) == []


def test_the_stores_import_nothing_of_the_layers_above_them() -> None:
    stores = sources("proxy.stores")
    assert len(stores) >= 8
    assert offending(stores, ABOVE_STORES) == []


def test_the_migration_tools_are_not_commands() -> None:
    """proxy.migrate holds the tools; their `cutover` verbs live in proxy.app."""
    tools = sources("proxy.migrate")
    assert offending(tools, ("proxy.app", "typer", "rich")) == []


def test_shadow_imports_nothing_of_proxy() -> None:
    """shadow/__init__.py says so: the worker's child is handed what it searches."""
    assert offending(sources("shadow"), ("proxy",)) == []


@pytest.mark.parametrize(("package", "allowed"), [("config", ()), ("metrics", ("config",))])
def test_config_and_metrics_import_nothing_of_the_project(
        package: str, allowed: tuple[str, ...]) -> None:
    project = tuple(p for p in ("proxy", "shadow", "metrics", "config") if p != package)
    found = [line for line in offending(sources(package), project)
             if not any(line.endswith(f" {a}") or f" {a}." in line for a in allowed)]
    assert found == []
