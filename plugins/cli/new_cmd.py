"""``cdp new tap NAME``: scaffold a tap package with the shape every CDP tap has, registered and tested.

Names follow Meltano's convention: ``cdp new tap acme-crm`` makes the extractor ``tap-acme-crm`` (provider
``acme-crm``) in the Python package ``taps/acme_crm``. It writes ``taps/acme_crm/`` (``__init__.py`` registering the
source through ``cdp_sources``, ``tap.py``, ``client.py``, ``streams.py``, ``sandbox.py`` serving a documented example
endpoint, ``schemas/items.json``) and ``tests/test_tap_acme_crm.py`` (singer-sdk's standard suite against the
sandbox); adds the ``cdp`` entry point and the ``tap-acme-crm`` console script to pyproject.toml; and adds the
extractor to meltano.yml with the settings every CDP tap has (tenant, provider, DLQ) and a dev environment pointing at
its sandbox, so ``meltano run tap-acme-crm target-s3raw`` works once the package is installed. The generated tap
passes its generated tests as it stands.
"""

from __future__ import annotations

import keyword
import re
import tomllib
import zlib
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
TRANSFORM_TEMPLATES = Path(__file__).parent / "templates" / "transform"
_NAME_RE = re.compile(r"[a-z][a-z0-9]*([-_][a-z0-9]+)*")
_RESERVED = {"stripe", "shopify", "salesforce", "webhooks", "test", "testing"}
# Table names longer than this make unwieldy identifiers (tenant.table, the package cdp_transform_NAME).
MAX_TRANSFORM_NAME = 30
# The built-in transforms' tables and the framework's own: a plugin writing one would fight over it.
_RESERVED_TABLES = {
    "customers",
    "orders",
    "products",
    "events",
    "customer_metrics",
    "customer_records",
    "customer_events",
    "identity_map",
    "identity_audit",
    "identity_merges",
    "erasures",
}


@dataclass(frozen=True)
class ScaffoldResult:
    """What ``cdp new tap`` wrote."""

    name: str
    package: Path
    files: list[Path]
    pyproject_changes: list[str]
    meltano_changes: list[str]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "extractor": f"tap-{self.name}",
            "package": str(self.package),
            "files": [str(path) for path in self.files],
            "pyproject_changes": self.pyproject_changes,
            "meltano_changes": self.meltano_changes,
        }


def _class_name(package: str) -> str:
    return "".join(part.capitalize() for part in package.split("_"))


def default_sandbox_port(name: str) -> int:
    """A stable port for the scaffolded sandbox, clear of the built-in ones (12111-12113)."""
    return 12120 + zlib.crc32(name.encode()) % 800


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
    # Blank lines and the comments just above the next table belong to that table, not to this one.
    while last > start and (not lines[last].strip() or lines[last].lstrip().startswith("#")):
        last -= 1
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    lines.insert(last + 1, f'{key} = "{value}"\n')
    return "".join(lines), True


def register_in_pyproject(pyproject: Path, name: str, package: str, class_name: str) -> list[str]:
    """Add the ``cdp`` entry point and the ``tap-NAME`` console script; returns the lines added."""
    text = pyproject.read_text(encoding="utf-8")
    added = []
    entries = [
        ("project.scripts", f"tap-{name}", f"taps.{package}.tap:Tap{class_name}.cli"),
        ("project.entry-points.cdp", f"tap-{name}", f"taps.{package}"),
    ]
    for section, key, value in entries:
        text, changed = _add_to_section(text, section, key, value)
        if changed:
            added.append(f'[{section}] {key} = "{value}"')
    parsed = tomllib.loads(text)  # never leave a broken pyproject.toml behind
    assert parsed["project"]["scripts"][f"tap-{name}"] == entries[0][2]
    pyproject.write_text(text, encoding="utf-8")
    return added


_EXTRACTOR = """\
    - name: tap-{name}
      namespace: tap_{package}
      executable: tap-{name}
      capabilities: [catalog, discover, state, about, stream-maps]
      settings:
        - name: provider
          kind: string
          value: {name}
          description: Provider name in raw-zone and DLQ paths (target-s3raw reads it as $MELTANO_EXTRACT_PROVIDER).
        - name: api_key
          kind: string
          sensitive: true
          description: The API key (sent as a bearer token).
        - name: api_url
          kind: string
          value: {api_url}
          description: Base URL of the API (a local sandbox in dev).
        - name: start_date
          kind: date_iso8601
          description: Extract items updated at or after this instant on the first run.
        - name: tenant
          kind: string
          description: Tenant of this extraction (names its DLQ and raw-zone folders).
        - name: dlq_url
          kind: string
          description: Where failed requests go; default CDP_DLQ_URL, else data/dlq.
        - name: s3_endpoint_url
          kind: string
          description: S3-compatible endpoint for an s3:// DLQ; default AWS.
        - name: max_runtime_seconds
          kind: integer
          description: Stop cleanly between pages after this long; the next run resumes from the final state.
"""
_DEV_CONFIG = """\
          - name: tap-{name}
            config:
              # The local sandbox's public test key (cdp sandbox serve {name}); real keys: {env_prefix}_API_KEY.
              api_key: {default_key}
              api_url: http://127.0.0.1:{sandbox_port}
              tenant: demo
"""


def _insert_after(lines: list[str], index: int, block: str) -> None:
    lines[index + 1 : index + 1] = block.splitlines(keepends=True)


def register_in_meltano(meltano_yml: Path, values: dict[str, str]) -> list[str]:
    """Add the extractor (and its dev-environment config) to meltano.yml; returns what was added.

    The text is edited in place so comments and layout survive; the result must still parse and name the extractor.
    """
    import yaml

    extractor = f"tap-{values['name']}"
    text = meltano_yml.read_text(encoding="utf-8")
    project = yaml.safe_load(text) or {}
    if any(e.get("name") == extractor for e in project.get("plugins", {}).get("extractors", []) or []):
        return []
    lines = text.splitlines(keepends=True)
    try:
        plugins_at = lines.index("plugins:\n")
        extractors_at = lines.index("  extractors:\n", plugins_at)
        end = next(i for i in range(extractors_at + 1, len(lines)) if re.match(r"^  \S", lines[i]))
    except (ValueError, StopIteration):
        raise CdpError(f"{meltano_yml} has no 'plugins: extractors:' list; add {extractor} by hand") from None
    while not lines[end - 1].strip():
        end -= 1
    _insert_after(lines, end - 1, _EXTRACTOR.format(**values))
    added = [f"plugins.extractors: {extractor}"]
    dev = next((i for i, line in enumerate(lines) if line == "  - name: dev\n"), None)
    dev_extractors = next(
        (i for i in range(dev or 0, len(lines)) if dev is not None and lines[i] == "        extractors:\n"), None
    )
    if dev_extractors is not None:
        _insert_after(lines, dev_extractors, _DEV_CONFIG.format(**values))
        added.append(f"environments.dev: {extractor} -> sandbox on port {values['sandbox_port']}")
    text = "".join(lines)
    parsed = yaml.safe_load(text)  # never leave a broken meltano.yml behind
    assert any(e.get("name") == extractor for e in parsed["plugins"]["extractors"])
    meltano_yml.write_text(text, encoding="utf-8")
    return added


def scaffold_tap(root: Path, name: str, *, title: str | None = None, api_url: str | None = None) -> ScaffoldResult:
    """Write the tap package, its test and its registration under project ``root``.

    ``name`` is the provider as Meltano names plugins (``acme-crm``; ``acme_crm`` means the same); the Python package
    is ``taps/acme_crm``.
    """
    name = name.removeprefix("tap-")
    if not _NAME_RE.fullmatch(name):
        msg = f"{name!r} must be lower-case letters and digits, words joined by '-' (acme-crm)"
        raise ConfigError("NAME", msg)
    name = name.replace("_", "-")
    package_name = name.replace("-", "_")
    if package_name in _RESERVED:
        raise ConfigError("NAME", f"'{name}' is taken; choose another name")
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise CdpError(f"no pyproject.toml in {root}; run this in the project root or pass --root")
    meltano_yml = root / "meltano.yml"
    package = root / "taps" / package_name
    test_file = root / "tests" / f"test_tap_{package_name}.py"
    for existing in (package, test_file):
        if existing.exists():
            raise CdpError(f"{existing} already exists; remove it or choose another name")

    class_name = _class_name(package_name)
    values = {
        "name": name,
        "package": package_name,
        "class_name": class_name,
        "title": title or " ".join(part.capitalize() for part in package_name.split("_")),
        "api_url": api_url or f"https://api.{package_name.replace('_', '')}.example.com",
        "default_key": f"sk_test_{package_name}_sandbox",
        "sandbox_port": str(default_sandbox_port(name)),
        "env_prefix": f"TAP_{package_name.upper()}",
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
    changes = register_in_pyproject(pyproject, name, package_name, class_name)
    meltano_changes = register_in_meltano(meltano_yml, values) if meltano_yml.is_file() else []
    return ScaffoldResult(
        name=name, package=package, files=written, pyproject_changes=changes, meltano_changes=meltano_changes
    )


@app.command("tap")
def new_tap(
    name: Annotated[str, typer.Argument(help="Source name, e.g. acme-crm (extractor tap-acme-crm, taps/acme_crm).")],
    title: Annotated[str | None, typer.Option(help="Human name of the provider, e.g. 'Acme CRM'.")] = None,
    api_url: Annotated[str | None, typer.Option("--api-url", help="The provider's production API base URL.")] = None,
    root: Annotated[Path | None, typer.Option(help="Project root (default: the folder holding meltano.yml).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Scaffold a tap package (tap, client, streams, sandbox, schemas), its test, pyproject.toml and meltano.yml."""
    result = scaffold_tap((root or find_project_root()).resolve(), name, title=title, api_url=api_url)
    if as_json:
        print_json(result.as_dict())
        return
    # Paths, TOML lines and commands are meant to be copied: never wrap them at the console's width.
    console.print(styled((f"tap-{result.name}", "bold"), f" scaffolded in {result.package}"), soft_wrap=True)
    for path in result.files:
        console.print(f"  wrote {path}", soft_wrap=True)
    for change in result.pyproject_changes:
        console.print(f"  pyproject.toml: {change}", soft_wrap=True)
    for change in result.meltano_changes:
        console.print(f"  meltano.yml: {change}", soft_wrap=True)
    package = result.package.name
    next_steps = (
        "Next: install it with `.venv/bin/uv pip install --python .venv/bin/python -e '.[dev]'`, run "
        f"`.venv/bin/pytest tests/test_tap_{package}.py`, try `cdp sandbox serve {result.name}` and, beside it, "
        f"`meltano run tap-{result.name} target-s3raw`; then follow docs/writing-a-tap.md."
    )
    console.print(next_steps, soft_wrap=True)


@dataclass(frozen=True)
class TransformScaffold:
    """What ``cdp new transform`` wrote."""

    name: str
    table: str
    package: str
    directory: Path
    files: list[Path]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "table": self.table,
            "package": self.package,
            "directory": str(self.directory),
            "entry_point": f"transform-{self.name}",
            "files": [str(path) for path in self.files],
        }


def scaffold_transform(parent: Path, name: str, *, title: str | None = None) -> TransformScaffold:
    """Write the distribution ``cdp-transform-NAME`` under ``parent``: the package ``cdp_transform_NAME`` (its
    ``__init__.py`` registering the descriptor, ``transform.py``), ``pyproject.toml`` with the ``cdp`` entry point,
    a README and a test. ``name`` is the table's name; ``-`` and ``_`` both join words (``loyalty-points`` writes the
    table ``loyalty_points``)."""
    name = name.removeprefix("transform-")
    if not _NAME_RE.fullmatch(name):
        msg = f"{name!r} must be lower-case letters and digits, words joined by '-' or '_' (loyalty-points)"
        raise ConfigError("NAME", msg)
    table = name.replace("-", "_")
    if len(table) > MAX_TRANSFORM_NAME:
        raise ConfigError("NAME", f"'{name}' is longer than {MAX_TRANSFORM_NAME} characters; choose a shorter name")
    if table in _RESERVED_TABLES or keyword.iskeyword(table):
        raise ConfigError("NAME", f"'{name}' is taken (a built-in table or a Python keyword); choose another name")
    name = table.replace("_", "-")
    package = f"cdp_transform_{table}"
    directory = parent / f"cdp-transform-{name}"
    if directory.exists():
        raise CdpError(f"{directory} already exists; remove it or choose another name")
    values = {
        "name": name,
        "table": table,
        "package": package,
        "title": title or " ".join(part.capitalize() for part in table.split("_")),
    }
    targets = {
        TRANSFORM_TEMPLATES / "__init__.py.tmpl": directory / package / "__init__.py",
        TRANSFORM_TEMPLATES / "transform.py.tmpl": directory / package / "transform.py",
        TRANSFORM_TEMPLATES / "tests" / "test_transform.py.tmpl": directory / "tests" / "test_transform.py",
        TRANSFORM_TEMPLATES / "pyproject.toml.tmpl": directory / "pyproject.toml",
        TRANSFORM_TEMPLATES / "README.md.tmpl": directory / "README.md",
    }
    rendered = {
        target: Template(source.read_text(encoding="utf-8")).substitute(values) for source, target in targets.items()
    }
    tomllib.loads(rendered[directory / "pyproject.toml"])  # never write a broken pyproject.toml
    for target, content in rendered.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return TransformScaffold(name=name, table=table, package=package, directory=directory, files=list(rendered))


@app.command("transform")
def new_transform(
    name: Annotated[str, typer.Argument(help="The output table, e.g. loyalty-points (table loyalty_points).")],
    title: Annotated[str | None, typer.Option(help="Human name of the transform, e.g. 'Loyalty points'.")] = None,
    directory: Annotated[
        Path | None, typer.Option(help="Where to create cdp-transform-NAME/ (default: the current folder).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Scaffold a transform package (descriptor, function, quality rules), its test, pyproject.toml and README."""
    result = scaffold_transform((directory or Path.cwd()).resolve(), name, title=title)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(
        styled((f"transform-{result.name}", "bold"), f" (table {result.table}) scaffolded in {result.directory}"),
        soft_wrap=True,
    )
    for path in result.files:
        console.print(f"  wrote {path}", soft_wrap=True)
    next_steps = (
        f"Next: `cd {result.directory}`, install it into the environment that runs cdp with "
        "`pip install -e '.[test]'`, run `pytest`, check `cdp plugins list`, then `cdp transform run --table "
        f"{result.table}`; docs/writing-a-transform.md explains each part."
    )
    console.print(next_steps, soft_wrap=True)


DESTINATION_TEMPLATES = Path(__file__).parent / "templates" / "destination"
# The built-in destinations: a plugin of the same name would fight over it.
_RESERVED_DESTINATIONS = {"email", "facebook", "google", "sms"}


@dataclass(frozen=True)
class DestinationScaffold:
    """What ``cdp new destination`` wrote."""

    name: str
    package: str
    directory: Path
    files: list[Path]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "package": self.package,
            "directory": str(self.directory),
            "entry_point": f"activator-{self.name}",
            "files": [str(path) for path in self.files],
        }


def scaffold_destination(parent: Path, name: str, *, title: str | None = None) -> DestinationScaffold:
    """Write the distribution ``cdp-destination-NAME`` under ``parent``: the package ``cdp_destination_NAME``
    (``__init__.py`` registering the descriptor, ``sender.py``, ``normalize.py``, ``sandbox.py``), a test that runs
    the delivery engine against the sandbox, ``pyproject.toml`` with the ``cdp`` entry point, and a README."""
    name = name.removeprefix("activator-").removeprefix("destination-")
    if not _NAME_RE.fullmatch(name):
        msg = f"{name!r} must be lower-case letters and digits, words joined by '-' or '_' (tiktok-audiences)"
        raise ConfigError("NAME", msg)
    module = name.replace("-", "_")
    if len(module) > MAX_TRANSFORM_NAME:
        raise ConfigError("NAME", f"'{name}' is longer than {MAX_TRANSFORM_NAME} characters; choose a shorter name")
    if module in _RESERVED_DESTINATIONS or keyword.iskeyword(module):
        raise ConfigError("NAME", f"'{name}' is taken (a built-in destination or a Python keyword); choose another")
    name = module.replace("_", "-")
    package = f"cdp_destination_{module}"
    directory = parent / f"cdp-destination-{name}"
    if directory.exists():
        raise CdpError(f"{directory} already exists; remove it or choose another name")
    values = {
        "name": name,
        "table": module,
        "package": package,
        "title": title or " ".join(part.capitalize() for part in module.split("_")),
        "port": str(default_sandbox_port(f"destination-{name}")),
    }
    targets = {
        DESTINATION_TEMPLATES / "__init__.py.tmpl": directory / package / "__init__.py",
        DESTINATION_TEMPLATES / "sender.py.tmpl": directory / package / "sender.py",
        DESTINATION_TEMPLATES / "normalize.py.tmpl": directory / package / "normalize.py",
        DESTINATION_TEMPLATES / "sandbox.py.tmpl": directory / package / "sandbox.py",
        DESTINATION_TEMPLATES / "tests" / "test_activator.py.tmpl": directory / "tests" / f"test_activator_{module}.py",
        DESTINATION_TEMPLATES / "pyproject.toml.tmpl": directory / "pyproject.toml",
        DESTINATION_TEMPLATES / "README.md.tmpl": directory / "README.md",
    }
    rendered = {
        target: Template(source.read_text(encoding="utf-8")).substitute(values) for source, target in targets.items()
    }
    tomllib.loads(rendered[directory / "pyproject.toml"])  # never write a broken pyproject.toml
    for target, content in rendered.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return DestinationScaffold(name=name, package=package, directory=directory, files=list(rendered))


@app.command("destination")
def new_destination(
    name: Annotated[str, typer.Argument(help="The destination's name, e.g. tiktok-audiences.")],
    title: Annotated[str | None, typer.Option(help="Human name, e.g. 'TikTok audiences'.")] = None,
    directory: Annotated[
        Path | None, typer.Option(help="Where to create cdp-destination-NAME/ (default: the current folder).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Scaffold an activation destination package (descriptor, sender, sandbox, normaliser), its test and README."""
    result = scaffold_destination((directory or Path.cwd()).resolve(), name, title=title)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(styled((f"activator-{result.name}", "bold"), f" scaffolded in {result.directory}"), soft_wrap=True)
    for path in result.files:
        console.print(f"  wrote {path}", soft_wrap=True)
    console.print(
        f"Next: `cd {result.directory}`, `pip install -e '.[test]'` into the environment that runs cdp, run "
        f"`pytest`, check `cdp plugins list` and `cdp sandbox serve {result.name}`; docs/writing-a-destination.md "
        "explains each part.",
        soft_wrap=True,
    )
