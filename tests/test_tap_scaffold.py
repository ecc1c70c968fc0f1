"""`cdp new tap NAME`: the scaffolded tap has the standard shape, is registered, and passes its own tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from plugins.cli.new_cmd import register_in_pyproject
from tests.conftest import REPO_ROOT

CDP = str(Path(sys.executable).parent / "cdp")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the repository's pyproject.toml and meltano.yml; plugins/ is the real one."""
    root = tmp_path / "project"
    (root / "taps").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(REPO_ROOT / "meltano.yml", root / "meltano.yml")
    shutil.copy(REPO_ROOT / "taps" / "__init__.py", root / "taps" / "__init__.py")
    (root / "plugins").symlink_to(REPO_ROOT / "plugins")  # so ruff sees plugins as first-party, as in the repo
    return root


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_new_tap_scaffolds_a_registered_package_that_passes_its_own_tests(project: Path) -> None:
    result = _run([CDP, "new", "tap", "acme_crm", "--title", "Acme CRM", "--root", str(project), "--json"], project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    package = project / "taps" / "acme_crm"
    assert report["package"] == str(package)
    for name in ("__init__.py", "tap.py", "client.py", "streams.py", "sandbox.py", "schemas/items.json"):
        assert (package / name).is_file(), name
    assert (project / "tests" / "test_tap_acme_crm.py").is_file()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["tap-acme_crm"] == "taps.acme_crm.tap:TapAcmeCrm.cli"
    assert pyproject["project"]["entry-points"]["cdp"]["tap-acme_crm"] == "taps.acme_crm"
    assert pyproject["project"]["scripts"]["tap-stripe"] == "taps.stripe.tap:TapStripe.cli"  # the rest is untouched

    pytest_args = ["tests/test_tap_acme_crm.py", "-q", "-p", "no:cacheprovider"]
    tests = _run([sys.executable, "-m", "pytest", *pytest_args], project)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout
    assert "failed" not in tests.stdout

    registered = _run(
        [sys.executable, "-c", "import taps.acme_crm as t; s = t.cdp_sources()[0]; print(s.name, s.executable)"],
        project,
    )
    assert registered.stdout.split() == ["acme_crm", "tap-acme_crm"]
    lint = _run([str(Path(sys.executable).parent / "ruff"), "check", "taps/acme_crm", "tests"], project)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize(("name", "problem"), [("Acme-CRM", "lower-case"), ("stripe", "taken")])
def test_new_tap_refuses_bad_or_taken_names_in_one_line(project: Path, name: str, problem: str) -> None:
    result = _run([CDP, "new", "tap", name, "--root", str(project)], project)
    assert result.returncode == 1
    assert problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "taps" / name).exists()


def test_new_tap_will_not_overwrite_an_existing_package(project: Path) -> None:
    (project / "taps" / "acme").mkdir()
    result = _run([CDP, "new", "tap", "acme", "--root", str(project)], project)
    assert result.returncode == 1
    assert "already exists" in result.stderr


def test_pyproject_registration_is_idempotent(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    assert len(register_in_pyproject(pyproject, "acme", "Acme")) == 2
    once = pyproject.read_text()
    assert register_in_pyproject(pyproject, "acme", "Acme") == []
    assert pyproject.read_text() == once
