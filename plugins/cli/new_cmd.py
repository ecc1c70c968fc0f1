"""``cdp new tap NAME``: scaffold a tap package with the shape every CDP tap has, registered and tested.

It writes ``taps/NAME/`` (``__init__.py`` registering the source through ``cdp_sources``, ``tap.py``, ``client.py``,
``streams.py``, ``sandbox.py`` serving a documented example endpoint, ``schemas/items.json``) and
``tests/test_tap_NAME.py`` (singer-sdk's standard suite against the sandbox), and adds the ``cdp`` entry point and the
``tap-NAME`` console script to pyproject.toml. The generated tap passes its generated tests as it stands.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Annotated

import typer

from plugins.cli.options import JsonOption
from plugins.cli.output import console, print_json, styled
from plugins.core.errors import CdpError, ConfigError
from plugins.meltano.project import find_project_root

app = typer.Typer(help="Scaffold new connectors.", no_args_is_help=True)

TEMPLATES = Path(__file__).parent / "templates" / "tap"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_RESERVED = {"stripe", "shopify", "salesforce", "webhooks", "test", "testing"}


@dataclass(frozen=True)
class ScaffoldResult:
    """What ``cdp new tap`` wrote."""

    name: str
    package: Path
    files: list[Path]
    pyproject_changes: list[str]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "package": str(self.package),
            "files": [str(path) for path in self.files],
            "pyproject_changes": self.pyproject_changes,
        }


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _add_to_section(text: str, section: str, key: str, value: str) -> tuple[str, bool]:
    """``text`` with ``key = "value"`` appended to TOML table ``[section]`` (unchanged if the key is there)."""
    lines = text.splitlines(keepends=True)
    header = f"[{section}]"
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == header)
    except StopIteration:
        raise CdpError(f"pyproject.toml has no {header} table; add it, then run 'cdp new tap' again") from None
    end = start + 1
    while end < len(lines) and not lines[end].lstrip().startswith("["):
        end += 1
    for line in lines[start + 1 : end]:
        if line.split("=", 1)[0].strip().strip('"') == key:
            return text, False
    last = end - 1
    while last > start and not lines[last].strip():
        last -= 1
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    lines.insert(last + 1, f'{key} = "{value}"\n')
    return "".join(lines), True


def register_in_pyproject(pyproject: Path, name: str, class_name: str) -> list[str]:
    """Add the ``cdp`` entry point and the ``tap-NAME`` console script; returns the lines added."""
    text = pyproject.read_text(encoding="utf-8")
    added = []
    entries = [
        ("project.scripts", f"tap-{name}", f"taps.{name}.tap:Tap{class_name}.cli"),
        ("project.entry-points.cdp", f"tap-{name}", f"taps.{name}"),
    ]
    for section, key, value in entries:
        text, changed = _add_to_section(text, section, key, value)
        if changed:
            added.append(f'[{section}] {key} = "{value}"')
    parsed = tomllib.loads(text)  # never leave a broken pyproject.toml behind
    assert parsed["project"]["scripts"][f"tap-{name}"] == entries[0][2]
    pyproject.write_text(text, encoding="utf-8")
    return added


def scaffold_tap(root: Path, name: str, *, title: str | None = None, api_url: str | None = None) -> ScaffoldResult:
    """Write the tap package, its test and its registration under project ``root``."""
    if not _NAME_RE.fullmatch(name):
        raise ConfigError("NAME", f"'{name}' must be lower-case letters and digits, words joined by '_' (acme_crm)")
    if name in _RESERVED:
        raise ConfigError("NAME", f"'{name}' is taken; choose another name")
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise CdpError(f"no pyproject.toml in {root}; run this in the project root or pass --root")
    package = root / "taps" / name
    test_file = root / "tests" / f"test_tap_{name}.py"
    for existing in (package, test_file):
        if existing.exists():
            raise CdpError(f"{existing} already exists; remove it or choose another name")

    class_name = _class_name(name)
    values = {
        "name": name,
        "class_name": class_name,
        "title": title or " ".join(part.capitalize() for part in name.split("_")),
        "api_url": api_url or f"https://api.{name.replace('_', '')}.example.com",
        "default_key": f"sk_test_{name}_sandbox",
    }
    targets = {
        TEMPLATES / "__init__.py.tmpl": package / "__init__.py",
        TEMPLATES / "tap.py.tmpl": package / "tap.py",
        TEMPLATES / "client.py.tmpl": package / "client.py",
        TEMPLATES / "streams.py.tmpl": package / "streams.py",
        TEMPLATES / "sandbox.py.tmpl": package / "sandbox.py",
        TEMPLATES / "schemas" / "items.json.tmpl": package / "schemas" / "items.json",
        TEMPLATES / "test_tap.py.tmpl": test_file,
    }
    rendered = {
        target: Template(source.read_text(encoding="utf-8")).substitute(values) for source, target in targets.items()
    }
    written = []
    for target, content in rendered.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        written.append(target)
    taps_init = root / "taps" / "__init__.py"
    if not taps_init.exists():
        taps_init.write_text('"""Singer taps, one package per source."""\n', encoding="utf-8")
        written.append(taps_init)
    changes = register_in_pyproject(pyproject, name, class_name)
    return ScaffoldResult(name=name, package=package, files=written, pyproject_changes=changes)


@app.command("tap")
def new_tap(
    name: Annotated[str, typer.Argument(help="Source name, e.g. acme_crm (taps/acme_crm, tap-acme_crm).")],
    title: Annotated[str | None, typer.Option(help="Human name of the provider, e.g. 'Acme CRM'.")] = None,
    api_url: Annotated[str | None, typer.Option("--api-url", help="The provider's production API base URL.")] = None,
    root: Annotated[Path | None, typer.Option(help="Project root (default: the folder holding meltano.yml).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Scaffold taps/NAME (tap, client, streams, sandbox, schemas), its test, and its pyproject.toml entries."""
    result = scaffold_tap((root or find_project_root()).resolve(), name, title=title, api_url=api_url)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(styled((f"tap-{name}", "bold"), f" scaffolded in {result.package}"))
    for path in result.files:
        console.print(f"  wrote {path}")
    for change in result.pyproject_changes:
        console.print(f"  pyproject.toml: {change}")
    next_steps = (
        "Next: register the entry points with `.venv/bin/uv pip install --python .venv/bin/python -e '.[dev]'`, run "
        f"`.venv/bin/pytest tests/test_tap_{name}.py`, then follow docs/writing-a-tap.md."
    )
    console.print(next_steps)
