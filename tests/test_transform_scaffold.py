"""`cdp new transform NAME`: the scaffold installs as a package, passes its own test on Spark, and registers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import nested_pytest_options

CDP = str(Path(sys.executable).parent / "cdp")


def _run(args: Sequence[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not installed; `make install` installs it into .venv")
    return uv


def test_new_transform_scaffolds_a_package_that_installs_passes_its_test_and_registers(tmp_path: Path) -> None:
    made = _run([CDP, "new", "transform", "loyalty-points", "--directory", tmp_path, "--json"], tmp_path)
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    project = tmp_path / "cdp-transform-loyalty-points"
    assert (report["directory"], report["table"], report["entry_point"]) == (
        str(project),
        "loyalty_points",
        "transform-loyalty-points",
    )
    package = project / "cdp_transform_loyalty_points"
    for path in (package / "__init__.py", package / "transform.py", project / "tests" / "test_transform.py"):
        assert path.is_file(), path
    assert "pip install" in (project / "README.md").read_text()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["cdp"] == {"transform-loyalty-points": "cdp_transform_loyalty_points"}

    # A fresh virtual environment that sees this one's packages (cdp-connectors, Spark), like a plugin author's.
    venv = tmp_path / "venv"
    assert _run([_uv(), "venv", "--python", sys.executable, venv], tmp_path).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip())
    (site / "cdp_connectors_dev.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n", encoding="utf-8"
    )
    installed = _run([_uv(), "pip", "install", "--python", python, "--no-deps", project], tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert list(site.glob("cdp_transform_loyalty_points-*.dist-info"))

    tests = _run([python, "-m", "pytest", "tests", *nested_pytest_options(tmp_path / "pytest")], project, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "3 passed" in tests.stdout

    listed = _run([python, "-m", "plugins.cli", "plugins", "list", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    plugin = next(p for p in json.loads(listed.stdout) if p["name"] == "transform-loyalty-points")
    assert plugin["kinds"] == ["transform"]
    probe = (
        "from plugins.manager import transforms\n"
        "[t] = [t for t in transforms() if t.name == 'loyalty_points']\n"
        "print(t.output, list(t.key), t.load_function().__module__, len(t.load_quality_rules()))"
    )
    seen = _run([python, "-c", probe], tmp_path)
    assert seen.stdout.split() == ["loyalty_points", "['record_id']", "cdp_transform_loyalty_points.transform", "3"]


def test_the_scaffold_is_lint_clean_for_names_up_to_the_longest_allowed(tmp_path: Path) -> None:
    ruff = str(Path(sys.executable).parent / "ruff")
    for name in ("points", "a-thirty-character-table-name1"):
        made = _run([CDP, "new", "transform", name, "--directory", tmp_path], tmp_path)
        assert made.returncode == 0, made.stderr
        project = tmp_path / f"cdp-transform-{name}"
        for check in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
            linted = _run(check, project)
            assert linted.returncode == 0, linted.stdout


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("Loyalty", "lower-case"),
        ("loyalty--points", "lower-case"),
        ("9lives", "lower-case"),
        ("loyalty\n", "lower-case"),
        ("orders", "taken"),
        ("class", "taken"),
        ("a-thirty-one-character-table-nm", "longer than 30"),
    ],
)
def test_new_transform_refuses_bad_or_taken_names_in_one_line(tmp_path: Path, name: str, problem: str) -> None:
    result = _run([CDP, "new", "transform", name, "--directory", tmp_path], tmp_path)
    assert result.returncode == 1
    assert problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_new_transform_will_not_overwrite_an_existing_package(tmp_path: Path) -> None:
    (tmp_path / "cdp-transform-points").mkdir()
    result = _run([CDP, "new", "transform", "points", "--directory", tmp_path], tmp_path)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert list((tmp_path / "cdp-transform-points").iterdir()) == []
