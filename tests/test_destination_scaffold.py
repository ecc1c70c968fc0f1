"""`cdp new destination NAME`: the scaffold installs as a package, passes its own test (the delivery engine against
its sandbox on PostgreSQL), registers, and its sandbox is served by `cdp sandbox serve`."""

from __future__ import annotations

import json
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.conftest import nested_pytest_options
from tests.test_transform_scaffold import _run, _uv

CDP = str(Path(sys.executable).parent / "cdp")


def test_new_destination_scaffolds_a_package_that_installs_passes_its_test_and_registers(tmp_path: Path) -> None:
    made = _run([CDP, "new", "destination", "tiktok-audiences", "--directory", tmp_path, "--json"], tmp_path)
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    project = tmp_path / "cdp-destination-tiktok-audiences"
    assert (report["directory"], report["entry_point"]) == (str(project), "activator-tiktok-audiences")
    package = project / "cdp_destination_tiktok_audiences"
    for name in ("__init__.py", "sender.py", "sandbox.py", "normalize.py"):
        assert (package / name).is_file(), name
    assert (project / "tests" / "test_activator_tiktok_audiences.py").is_file()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["cdp"] == {
        "activator-tiktok-audiences": "cdp_destination_tiktok_audiences"
    }

    # A fresh virtual environment that sees this one's packages (cdp-connectors, PostgreSQL), like a plugin author's.
    venv = tmp_path / "venv"
    assert _run([_uv(), "venv", "--python", sys.executable, venv], tmp_path).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip())
    (site / "cdp_connectors_dev.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n", encoding="utf-8"
    )
    installed = _run([_uv(), "pip", "install", "--python", python, "--no-deps", project], tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]

    tests = _run([python, "-m", "pytest", "tests", *nested_pytest_options(tmp_path / "pytest")], project, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "3 passed" in tests.stdout

    listed = _run([python, "-m", "plugins.cli", "sandbox", "list", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {"name": "tiktok-audiences", "kind": "activation destination"}.items() <= next(
        row for row in json.loads(listed.stdout) if row["name"] == "tiktok-audiences"
    ).items()
    plugins = _run([python, "-m", "plugins.cli", "plugins", "list", "--json"], tmp_path)
    plugin = next(p for p in json.loads(plugins.stdout) if p["name"] == "activator-tiktok-audiences")
    assert plugin["kinds"] == ["activator"]


def test_the_destination_scaffold_is_lint_clean_for_names_up_to_the_longest_allowed(tmp_path: Path) -> None:
    ruff = str(Path(sys.executable).parent / "ruff")
    for name in ("x", "a-thirty-character-destinatio1"):
        made = _run([CDP, "new", "destination", name, "--directory", tmp_path], tmp_path)
        assert made.returncode == 0, made.stderr
        checks: list[list[str | Path]] = [[ruff, "check", "."], [ruff, "format", "--check", "."]]
        for check in checks:
            linted = _run(check, tmp_path / f"cdp-destination-{name}")
            assert linted.returncode == 0, linted.stdout


@pytest.mark.parametrize(
    ("name", "problem"),
    [("TikTok", "lower-case"), ("email", "taken"), ("class", "taken"), ("a" * 31, "longer than 30")],
)
def test_new_destination_refuses_bad_or_taken_names_in_one_line(tmp_path: Path, name: str, problem: str) -> None:
    made = _run([CDP, "new", "destination", name, "--directory", tmp_path], tmp_path)
    assert made.returncode == 1
    assert problem in made.stderr
    assert len(made.stderr.strip().splitlines()) == 1
