"""The layers stay visible: who may import whom (docs/architecture.md draws them).

Every import in the framework and the connectors is checked, including those inside functions; imports under
``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONNECTOR_PACKAGES = ("taps", "targets", "transforms", "loaders", "activators")
HOOK_SYSTEM = (
    "plugins",
    "plugins.hookspecs",
    "plugins.descriptors",
    "plugins.manager",
    "plugins.context",
    "plugins.alerts",
)

# What each layer may import from this repository (itself always included). Layers are matched longest first.
ALLOWED: dict[str, tuple[str, ...]] = {
    "plugins.core": (),
    "schema_registry": ("plugins.core",),
    "plugins.meltano": ("plugins.core",),
    **{module: ("plugins.core", "plugins.meltano", *HOOK_SYSTEM) for module in HOOK_SYSTEM},
    "plugins.connectors": ("plugins.core", *HOOK_SYSTEM),
    "plugins.dlq": ("plugins.core", "plugins.meltano", "schema_registry", *HOOK_SYSTEM),
    "plugins.webhooks": ("plugins.core", "plugins.connectors", *HOOK_SYSTEM),
    "plugins.transforms": ("plugins.core", "schema_registry", *HOOK_SYSTEM),
    "plugins.loaders": ("plugins.core", "plugins.transforms", *HOOK_SYSTEM),
    "plugins.activation": ("plugins.core", "plugins.dlq", *HOOK_SYSTEM),
    "plugins.cli": ("plugins", "schema_registry"),
}


# A connector may build on another connector only where the plan says so: campaigns refresh and export segments.
CONNECTOR_DEPENDENCIES: dict[str, tuple[str, ...]] = {"activators.campaigns": ("activators.segments",)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str) -> Iterator[str]:
    """Every module a tree imports, relative imports resolved against ``package`` (the importing module's package)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), package)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..core import y
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            if base:
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)
        yield from _imports(node, package)


def _project_imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _in_project(_imports(ast.parse(path.read_text(), str(path)), package))


def _in_project(names: Iterable[str]) -> set[str]:
    tops = ("plugins", "schema_registry", *CONNECTOR_PACKAGES)
    return {name for name in names if name.split(".")[0] in tops}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(module: str) -> str | None:
    candidates = [layer for layer in ALLOWED if _within(module, layer)]
    return max(candidates, key=len) if candidates else None


def _sources(*tops: str) -> list[Path]:
    return sorted(path for top in tops for path in (ROOT / top).rglob("*.py"))


def _real_modules(names: set[str]) -> set[str]:
    """``from plugins.core import errors`` names the module ``plugins.core.errors``; keep the longest real module."""
    modules = set()
    for name in names:
        parts = name.split(".")
        while parts and not (
            (ROOT / Path(*parts)).with_suffix(".py").is_file() or (ROOT / Path(*parts) / "__init__.py").is_file()
        ):
            parts.pop()
        if parts:
            modules.add(".".join(parts))
    return modules


@pytest.mark.parametrize("path", _sources("plugins", "schema_registry"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_framework_imports_only_the_layers_below_it(path: Path) -> None:
    module = _module_name(path)
    layer = _layer(module)
    assert layer is not None, f"{module} belongs to no layer; add its subpackage to ALLOWED and docs/architecture.md"
    allowed = (layer, *ALLOWED[layer])
    wrong = sorted(
        name for name in _real_modules(_project_imports(path)) if not any(_within(name, ok) for ok in allowed)
    )
    assert not wrong, f"{module} ({layer}) may import only {', '.join(allowed)}; it imports {', '.join(wrong)}"


@pytest.mark.parametrize("path", _sources(*CONNECTOR_PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_connector_imports_the_framework_and_itself_never_a_sibling(path: Path) -> None:
    module = _module_name(path)
    own = ".".join(module.split(".")[:2])
    siblings = sorted(
        name
        for name in _real_modules(_project_imports(path))
        if name.split(".")[0] in CONNECTOR_PACKAGES
        and not _within(name, own)
        and name not in CONNECTOR_PACKAGES
        and not any(_within(name, allowed) for allowed in CONNECTOR_DEPENDENCIES.get(own, ()))
    )
    assert not siblings, f"{module} imports another connector: {', '.join(siblings)} (share code through plugins/)"


def test_every_framework_subpackage_says_what_it_is_for_and_what_it_may_import() -> None:
    for init in [*sorted((ROOT / "plugins").glob("*/__init__.py")), ROOT / "schema_registry" / "__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init.relative_to(ROOT)} must open with a docstring saying what it may import"


def test_relative_imports_are_checked_like_absolute_ones() -> None:
    tree = ast.parse("from ..connectors import sandbox\nfrom . import errors\nfrom .layout import Zone\n")
    found = _in_project(_imports(tree, "plugins.core"))
    assert found >= {"plugins.connectors.sandbox", "plugins.core.errors", "plugins.core.layout"}
