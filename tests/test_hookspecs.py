"""Every hook is documented in docs/plugins.md and has a test named test_hook_<name> (as datasette does)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from plugins import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("cdp_"))


def test_there_are_hooks() -> None:
    assert set(HOOKS) == {
        "cdp_sources",
        "cdp_targets",
        "cdp_transforms",
        "cdp_loaders",
        "cdp_activators",
        "cdp_alert_sinks",
        "cdp_commands",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_plugins_md(hook: str) -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### `{hook}\(", docs, re.MULTILINE), f"docs/plugins.md has no '### `{hook}(...)`' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    assert (getattr(hookspecs, hook).__doc__ or "").strip()


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    tests = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    assert f"def test_hook_{hook}(" in tests, f"no test named test_hook_{hook}"
