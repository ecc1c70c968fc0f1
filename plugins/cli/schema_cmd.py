"""``cdp schema``: list, show, diff, check and register subjects' schemas, and set their compatibility mode."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from plugins.cli.options import (
    JsonOption,
    LakeUrlOption,
    RegistryUrlOption,
    S3EndpointOption,
    Zone,
    resolve_zone_url,
)
from plugins.cli.output import console, print_error, print_json, styled
from schema_registry import (
    CompatibilityMode,
    IncompatibleSchemaError,
    InvalidSchemaError,
    SchemaRegistry,
    SchemaRegistryError,
    SchemaVersion,
    SubjectNotFoundError,
    Violation,
    diff_schemas,
    parse_subject,
)

app = typer.Typer(help="The schema registry: subjects tenant/provider/stream and their versions.", no_args_is_help=True)

SubjectArgument = Annotated[str, typer.Argument(help="Subject, e.g. acme/stripe/customers.", show_default=False)]
FileArgument = Annotated[
    str, typer.Argument(help="JSON Schema file ('-' for stdin); a Singer SCHEMA message works too.", show_default=False)
]


def _registry(registry_url: str | None, s3_endpoint_url: str | None, lake_url: str | None) -> SchemaRegistry:
    return SchemaRegistry.from_url(
        resolve_zone_url(Zone.REGISTRY, registry_url, lake_url), s3_endpoint_url=s3_endpoint_url
    )


def read_schema_file(path: str) -> dict[str, Any]:
    """A JSON Schema from a file or stdin; a Singer SCHEMA message yields its ``schema``."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InvalidSchemaError(f"cannot read schema file '{path}': {exc.strerror or exc}") from None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidSchemaError(f"schema file '{path}' is not JSON: {exc}") from None
    if isinstance(document, dict) and document.get("type") == "SCHEMA" and isinstance(document.get("schema"), dict):
        document = document["schema"]
    if not isinstance(document, dict):
        raise InvalidSchemaError(f"schema file '{path}' must hold a JSON object, not {type(document).__name__}")
    return document


def _print_violations(violations: list[Violation]) -> None:
    for violation in violations:
        against = f" (v{violation.version})" if violation.version is not None else ""
        text = f"{violation.path}{against}: {violation.message}"
        console.print(styled("  ", ("✗", "red"), " ", text), highlight=False, soft_wrap=True)


def _when(version: SchemaVersion) -> str:
    return str(version.as_dict()["registered_at"])


@app.command("list")
def list_subjects(
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """List every subject with its latest version and mode."""
    registry = _registry(registry_url, s3_endpoint_url, lake_url)
    rows: list[dict[str, Any]] = []
    for subject in registry.subjects():
        numbers = registry.versions(subject)
        latest = registry.get(subject, numbers[-1])
        rows.append(
            {
                "subject": subject,
                "latest_version": latest.version,
                "versions": len(numbers),
                "mode": registry.get_mode(subject).value,
                "fingerprint": latest.fingerprint,
                "registered_at": _when(latest),
            }
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"no subjects in {registry.store.url}")
        return
    table = Table(title=f"schema registry: {registry.store.url}")
    for column in ("subject", "latest", "versions", "mode", "registered at"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["subject"],
            str(row["latest_version"]),
            str(row["versions"]),
            row["mode"],
            row["registered_at"][:19] + "Z",
        )
    console.print(table)


@app.command("show")
def show(
    subject: SubjectArgument,
    version: Annotated[int | None, typer.Option("--version", "-v", help="Version to show (default: latest).")] = None,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one version of a subject's schema (the latest by default)."""
    registry = _registry(registry_url, s3_endpoint_url, lake_url)
    found = _version_or_latest(registry, subject, version)
    mode = registry.get_mode(subject)
    if as_json:
        print_json({**found.as_dict(), "mode": mode.value, "versions": registry.versions(subject)})
        return
    forced = " (force-registered)" if found.forced else ""
    console.print(
        styled(
            (subject, "bold"),
            f" version {found.version} of {registry.versions(subject)[-1]}",
            (forced, "yellow"),
            f"\nmode {mode.value} · registered {_when(found)} · fingerprint {found.fingerprint[:16]}",
        ),
        highlight=False,
        soft_wrap=True,
    )
    console.print_json(data=found.schema)


def _version_or_latest(registry: SchemaRegistry, subject: str, version: int | None) -> SchemaVersion:
    if version is not None:
        return registry.get(subject, version)
    latest = registry.latest(subject)
    if latest is None:
        raise SubjectNotFoundError(subject)
    return latest


@app.command("diff")
def diff(
    subject: SubjectArgument,
    file: Annotated[
        str | None, typer.Argument(help="Compare the latest version with this schema file instead.", show_default=False)
    ] = None,
    from_version: Annotated[
        int | None, typer.Option("--from", help="Old version (default: the one before --to).")
    ] = None,
    to_version: Annotated[int | None, typer.Option("--to", help="New version (default: the latest).")] = None,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what changed between two versions, or between the latest version and a schema file."""
    registry = _registry(registry_url, s3_endpoint_url, lake_url)
    new_ref: dict[str, Any]
    if file is not None:
        if to_version is not None:
            raise typer.BadParameter("give either FILE or --to, not both")
        old = _version_or_latest(registry, subject, from_version)
        new_schema, new_label, new_ref = read_schema_file(file), file, {"file": file}
    else:
        new = _version_or_latest(registry, subject, to_version)
        numbers = [n for n in registry.versions(subject) if n < new.version]
        if from_version is None and not numbers:
            raise SchemaRegistryError(
                f"'{subject}' has only version {new.version}; compare it with a file: cdp schema diff {subject} FILE"
            )
        old = registry.get(subject, from_version if from_version is not None else numbers[-1])
        new_schema, new_label, new_ref = new.schema, f"version {new.version}", {"version": new.version}
    changes = diff_schemas(old.schema, new_schema)
    if as_json:
        print_json(
            {
                "subject": subject,
                "from": {"version": old.version},
                "to": new_ref,
                "changes": [change.as_dict() for change in changes],
            }
        )
        return
    console.print(styled((subject, "bold"), f": version {old.version} → {new_label}"), highlight=False)
    if not changes:
        console.print("  no differences (annotations and key order are ignored)")
    marks = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}
    for change in changes:
        console.print(styled("  ", marks[change.change], " ", change.describe()), highlight=False, soft_wrap=True)


@app.command("check")
def check(
    subject: SubjectArgument,
    file: FileArgument,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a schema file against the subject's mode; exits 1 and lists the violations when incompatible."""
    registry = _registry(registry_url, s3_endpoint_url, lake_url)
    parse_subject(subject)
    result = registry.check(subject, read_schema_file(file))
    if as_json:
        print_json({"subject": subject, **result.as_dict()})
    else:
        against = ", ".join(str(n) for n in result.against_versions) or (
            "nothing (NONE checks nothing)" if result.mode is CompatibilityMode.NONE else "nothing (first version)"
        )
        if result.compatible:
            console.print(f"compatible: {subject} under {result.mode.value}, checked against {against}")
        else:
            console.print(
                f"incompatible: {subject} under {result.mode.value}, checked against {against}; "
                f"{len(result.violations)} violation(s):",
                highlight=False,
                soft_wrap=True,
            )
            _print_violations(result.violations)
    if not result.compatible:
        raise typer.Exit(1)


@app.command("register")
def register(
    subject: SubjectArgument,
    file: FileArgument,
    force: Annotated[
        bool, typer.Option("--force", help="Register even if incompatible with the subject's mode (operator override).")
    ] = False,
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a schema file as the subject's next version (no-op when it equals the latest)."""
    registry = _registry(registry_url, s3_endpoint_url, lake_url)
    schema = read_schema_file(file)
    try:
        result = registry.register(subject, schema, force=force)
    except IncompatibleSchemaError as exc:
        if as_json:
            print_json(
                {
                    "subject": subject,
                    "created": False,
                    "mode": exc.mode.value if exc.mode else None,
                    "against_versions": exc.against_versions,
                    "violations": [v.as_dict() for v in exc.violations],
                }
            )
        else:
            console.print(f"not registered: {len(exc.violations)} violation(s):", highlight=False)
            _print_violations(exc.violations)
        mode = exc.mode.value if exc.mode else "its mode"
        print_error(
            f"schema for '{subject}' is incompatible under {mode}; "
            "fix it, change the mode ('cdp schema set-mode') or re-run with --force"
        )
        raise typer.Exit(1) from None
    if as_json:
        print_json(result.as_dict())
        return
    number = result.version.version
    if not result.created:
        console.print(f"unchanged: {subject} version {number} already has this schema", highlight=False)
    elif result.version.forced:
        violations = result.compatibility.violations if result.compatibility else []
        console.print(
            styled(
                ("force-registered", "yellow"), f" {subject} version {number} despite {len(violations)} violation(s):"
            ),
            highlight=False,
        )
        _print_violations(violations)
    else:
        console.print(f"registered {subject} version {number}", highlight=False)


@app.command("set-mode")
def set_mode(
    subject: SubjectArgument,
    mode: Annotated[
        str,
        typer.Argument(help="One of " + ", ".join(m.value for m in CompatibilityMode) + ".", show_default=False),
    ],
    registry_url: RegistryUrlOption = None,
    lake_url: LakeUrlOption = None,
    s3_endpoint_url: S3EndpointOption = None,
) -> None:
    """Set a subject's compatibility mode ('default' as SUBJECT sets the registry-wide default)."""
    try:
        wanted = CompatibilityMode.parse(mode)
    except SchemaRegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="MODE") from None
    registry = _registry(registry_url, s3_endpoint_url, lake_url)
    if subject == "default":
        parsed = registry.set_default_mode(wanted)
        console.print(f"registry-wide default mode is now {parsed.value}", highlight=False)
        return
    parsed = registry.set_mode(subject, wanted)
    console.print(f"{subject} mode is now {parsed.value}", highlight=False)
