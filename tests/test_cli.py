"""CLI conventions: exit codes 0/1/2, one-line errors (tracebacks only with --debug), --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.connectors.testing import announced_url
from plugins.core.zones import Zone, resolve_zone_url

CDP = str(Path(sys.executable).parent / "cdp")


def cdp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CDP, *args], capture_output=True, text=True, check=False, env=os.environ.copy())


def test_plugins_list_json_shows_the_built_ins() -> None:
    result = cdp("plugins", "list", "--json")
    assert result.returncode == 0
    names = {entry["name"]: entry["kinds"] for entry in json.loads(result.stdout)}
    assert names["tap-stripe"] == ["source"]
    assert names["target-s3raw"] == ["target"]


def test_plugins_list_prints_a_table_for_people() -> None:
    result = cdp("plugins", "list")
    assert result.returncode == 0
    assert "tap-stripe" in result.stdout
    assert "cdp_sources" in result.stdout


def test_usage_errors_exit_2() -> None:
    result = cdp("plugins", "list", "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_failures_exit_1_with_one_line_on_stderr() -> None:
    result = cdp("sandbox", "serve", "nosuch")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: no source plugin named 'nosuch' (known: stripe)"] or (
        len(result.stderr.strip().splitlines()) == 1 and "no source plugin named 'nosuch'" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = cdp("--debug", "sandbox", "serve", "nosuch")
    assert result.returncode == 1
    assert "Traceback" in result.stderr


@pytest.mark.parametrize("zone", list(Zone))
def test_zone_urls_resolve_option_then_environment_then_default(zone: Zone, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zone.env_var, raising=False)
    assert resolve_zone_url(zone) == f"data/{zone.value}"
    monkeypatch.setenv(zone.env_var, f"s3://bucket/{zone.value}")
    assert resolve_zone_url(zone) == f"s3://bucket/{zone.value}"
    assert resolve_zone_url(zone, "/explicit") == "/explicit"


def test_sandbox_serve_answers_the_providers_protocol(tmp_path: Path) -> None:
    import requests

    output = tmp_path / "stdout"
    with output.open("wb") as stdout:
        server = subprocess.Popen(
            [
                CDP,
                "sandbox",
                "serve",
                "stripe",
                "--port",
                "0",
                "--records",
                "7",
                "--fault",
                "rate_limit_every=3",
                "--credential",
                "api_key=sk_test_other",
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"{announced_url(server, output)}/v1/customers"
        response = requests.get(url, headers={"Authorization": "Bearer sk_test_cdp_sandbox"}, timeout=10)
        assert response.status_code == 401  # only the key given with --credential is accepted
        auth = {"Authorization": "Bearer sk_test_other"}
        statuses = [requests.get(url, headers=auth, timeout=2).status_code for _ in range(3)]
        assert statuses.count(429) == 1  # --fault rate_limit_every=3
        ok = next(r for r in (requests.get(url, headers=auth, timeout=2) for _ in range(3)) if r.status_code == 200)
        assert len(ok.json()["data"]) == 7
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_sandbox_serve_rejects_a_malformed_fault() -> None:
    result = cdp("sandbox", "serve", "stripe", "--fault", "no-equals-sign")
    assert result.returncode == 2
    assert "is not NAME=VALUE" in result.stderr


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("rate_limit_evry=3", "unknown fault 'rate_limit_evry'"),
        ("rate_limit_every=often", "fault 'rate_limit_every' takes a whole number, not 'often'"),
        ("slow_seconds=-1", "fault 'slow_seconds' takes a number of 0 or more"),
    ],
)
def test_sandbox_serve_names_a_bad_fault_in_one_line(fault: str, message: str) -> None:
    result = cdp("sandbox", "serve", "stripe", "--fault", fault)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.replace("│", " ").split())  # typer frames usage errors
    assert "Traceback" not in result.stderr


def test_sandbox_serve_refuses_a_fault_the_sandbox_does_not_offer() -> None:
    result = cdp("sandbox", "serve", "stripe", "--fault", "session_uses=3")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "the stripe sandbox has no fault 'session_uses'" in line


def test_sandbox_serve_tls_serves_https_with_the_ca_it_prints(tmp_path: Path) -> None:
    import socket
    import time

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [CDP, "sandbox", "serve", "stripe", "--tls", "--port", str(port), "--records", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert banner.startswith(f"stripe sandbox on https://127.0.0.1:{port} ")
        ca_line = server.stdout.readline()
        assert ca_line.startswith("CA certificate: ")
        ca_file = ca_line.split()[2]
        url = f"https://127.0.0.1:{port}/v1/customers"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = requests.get(
                    url, headers={"Authorization": "Bearer sk_test_cdp_sandbox"}, verify=ca_file, timeout=2
                )
                break
            except requests.exceptions.SSLError:
                raise  # the printed CA must be the one the server's certificate comes from
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "sandbox did not start"
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.2)
        assert response.status_code == 200
        assert len(response.json()["data"]) == 3
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert not Path(ca_file).exists()  # the throwaway certificate goes with the server


def test_help_lists_every_built_in_with_its_own_summary_without_importing_it() -> None:
    code = (
        "import sys\n"
        "from plugins.cli.app import main\n"
        "main(['--help'])\n"
        "heavy = ('pyarrow', 'plugins.dlq', 'schema_registry', 'plugins.cli.demo_cmd', 'singer_sdk', 'starlette')\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"
    from plugins.cli.app import BUILT_IN_COMMANDS, load_built_in

    for name, (_, summary) in BUILT_IN_COMMANDS.items():
        assert f" {name} " in result.stdout
        command = load_built_in(name)
        assert " ".join((command.help or "").split()) == summary, f"cdp {name}: update BUILT_IN_COMMANDS' summary"
