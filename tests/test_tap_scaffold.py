"""`cdp new tap NAME`: the scaffolded tap has the standard shape, is registered, and passes its own tests."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from plugins.cli.new_cmd import register_in_meltano, register_in_pyproject
from plugins.connectors.sandbox import SandboxOptions, SandboxServer
from plugins.core.raw_zone import read_batch
from plugins.core.storage import ObjectStore
from plugins.meltano.project import run_meltano
from tests.conftest import REPO_ROOT, nested_pytest_options

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
    result = _run([CDP, "new", "tap", "acme-crm", "--title", "Acme CRM", "--root", str(project), "--json"], project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    package = project / "taps" / "acme_crm"
    assert (report["package"], report["extractor"]) == (str(package), "tap-acme-crm")
    for name in ("__init__.py", "tap.py", "client.py", "streams.py", "sandbox.py", "schemas/items.json"):
        assert (package / name).is_file(), name
    assert (project / "tests" / "test_tap_acme_crm.py").is_file()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["tap-acme-crm"] == "taps.acme_crm.tap:TapAcmeCrm.cli"
    assert pyproject["project"]["entry-points"]["cdp"]["tap-acme-crm"] == "taps.acme_crm"
    assert pyproject["project"]["scripts"]["tap-stripe"] == "taps.stripe.tap:TapStripe.cli"  # the rest is untouched

    pytest_args = ["tests/test_tap_acme_crm.py", *nested_pytest_options(project.parent / "pytest")]
    tests = _run([sys.executable, "-m", "pytest", *pytest_args], project)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout
    assert "failed" not in tests.stdout

    registered = _run(
        [sys.executable, "-c", "import taps.acme_crm as t; s = t.cdp_sources()[0]; print(s.name, s.executable)"],
        project,
    )
    assert registered.stdout.split() == ["acme-crm", "tap-acme-crm"]
    lint = _run([str(Path(sys.executable).parent / "ruff"), "check", "taps/acme_crm", "tests"], project)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.meltano
def test_the_scaffolded_extractor_runs_in_meltano_into_target_s3raw(project: Path) -> None:
    assert _run([CDP, "new", "tap", "acme-crm", "--root", str(project)], project).returncode == 0
    meltano = yaml.safe_load((project / "meltano.yml").read_text())
    extractor = next(e for e in meltano["plugins"]["extractors"] if e["name"] == "tap-acme-crm")
    assert {s["name"] for s in extractor["settings"]} >= {"tenant", "provider", "dlq_url", "api_key", "api_url"}
    # What the printed install step creates: the console script `tap-acme-crm` for the new package.
    bin_dir = project / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tap-acme-crm"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(project)!r})\n"
        "from taps.acme_crm.tap import TapAcmeCrm\nTapAcmeCrm.cli()\n"
    )
    script.chmod(0o755)

    # The scaffold's sandbox imports only the framework, so it loads from its file even though this process already
    # imported the repository's own `taps` package.
    spec = importlib.util.spec_from_file_location("scaffolded_sandbox", project / "taps" / "acme_crm" / "sandbox.py")
    assert spec is not None
    assert spec.loader is not None
    sandbox_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sandbox_module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(sandbox_module)
    create_sandbox = sandbox_module.create_sandbox
    with SandboxServer(create_sandbox(SandboxOptions(records=30))) as sandbox:
        env = {
            "PYTHONPATH": str(project),
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
            "TAP_ACME_CRM_API_URL": sandbox.url,
        }
        run_meltano(
            ["run", "tap-acme-crm", "target-s3raw"], project_root=project, extra_env=env, capture=True, timeout=240
        )
    landed = ObjectStore(str(project / "data" / "raw")).list("demo/acme-crm")
    assert landed, "nothing landed under data/raw/demo/acme-crm"
    assert sum(len(read_batch(ObjectStore(str(project / "data" / "raw")), info.key)) for info in landed) == 30


@pytest.mark.parametrize(
    ("name", "problem"),
    [("Acme-CRM", "lower-case"), ("acme--crm", "lower-case"), ("acme\n", "lower-case"), ("stripe", "taken")],
)
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


def test_new_tap_prints_each_path_and_registration_on_one_line_to_copy(project: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(project), "COLUMNS": "80"}  # a narrow terminal, or a pipe
    args = [CDP, "new", "tap", "acme", "--root", str(project)]
    result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"  wrote {project / 'taps' / 'acme' / 'sandbox.py'}" in lines
    assert '  pyproject.toml: [project.scripts] tap-acme = "taps.acme.tap:TapAcme.cli"' in lines
    assert any("`meltano run tap-acme target-s3raw`" in line for line in lines)


def test_pyproject_registration_is_idempotent(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    assert len(register_in_pyproject(pyproject, "acme", "acme", "Acme")) == 2
    once = pyproject.read_text()
    assert register_in_pyproject(pyproject, "acme", "acme", "Acme") == []
    assert pyproject.read_text() == once


def test_pyproject_registration_leaves_the_next_tables_comment_above_that_table(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project.scripts]\ncdp = "plugins.cli.__main__:run"\n\n'
        '# Every plugin is found through this group.\n[project.entry-points.cdp]\ntap-stripe = "taps.stripe"\n'
    )
    register_in_pyproject(pyproject, "acme", "acme", "Acme")
    assert pyproject.read_text() == (
        '[project.scripts]\ncdp = "plugins.cli.__main__:run"\ntap-acme = "taps.acme.tap:TapAcme.cli"\n\n'
        '# Every plugin is found through this group.\n[project.entry-points.cdp]\ntap-stripe = "taps.stripe"\n'
        'tap-acme = "taps.acme"\n'
    )


def test_meltano_registration_is_idempotent_and_keeps_comments(project: Path) -> None:
    meltano_yml = project / "meltano.yml"
    values = {
        "name": "acme",
        "package": "acme",
        "api_url": "https://api.acme.example.com",
        "default_key": "k",
        "sandbox_port": "12999",
        "env_prefix": "TAP_ACME",
    }
    assert len(register_in_meltano(meltano_yml, values)) == 2
    once = meltano_yml.read_text()
    assert "# In dev every plugin runs from the project's own environment" in once
    dev = next(e for e in yaml.safe_load(once)["environments"] if e["name"] == "dev")
    acme = next(e for e in dev["config"]["plugins"]["extractors"] if e["name"] == "tap-acme")
    assert acme["config"]["api_url"] == "http://127.0.0.1:12999"
    assert register_in_meltano(meltano_yml, values) == []
    assert meltano_yml.read_text() == once
