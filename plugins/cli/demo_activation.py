"""The end of ``cdp demo``: from the served customers to a campaign's results.

After the load step, the demo applies ``segments/`` and refreshes the demo segment with an export; starts the webhook
receiver (which also serves email's one-click unsubscribe) and every activation destination's sandbox (SMTP that
checks DKIM, the Facebook Marketing API, Google's Data Manager API); applies ``campaigns/`` and ``contents/`` and
launches each campaign; posts signed feedback events (the generic ``campaign-events`` format) for a few of the
members the email reached; drains them through Meltano into ``events``; and prints ``cdp campaign metrics``.

Everything goes through the ``cdp`` commands and the plugins' descriptors, as a user would: nothing here knows a
destination's code. A second run sends nobody twice: the segment has no new members, and the send log would skip
anyone it already holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.table import Table

from plugins.cli.demo_cmd import (
    DEMO_TENANT,
    LOAD_COMMAND,
    TRANSFORM_COMMAND,
    DemoError,
    has_transform_utility,
    run_cdp_command,
)
from plugins.cli.output import console, styled
from plugins.connectors.sandbox import SandboxOptions, SandboxServer
from plugins.meltano.project import environment_bin, meltano_env, run_meltano

#: The segment the demo's campaigns target (segments/demo-buyers.yml: members even with --records 20).
DEMO_SEGMENT = "demo-buyers"
#: The campaign whose members get feedback events (campaigns/demo-buyers-email.yml).
EMAIL_CAMPAIGN = "demo-buyers-email"
FEEDBACK_PROVIDER = "campaign-events"
FEEDBACK_TAP = "tap-webhooks--campaign-events"
#: Local-only secrets for the demo's receiver and sandboxes; the environment's win when set.
DEMO_SECRETS = {
    "CDP_WEBHOOK_SECRET__DEMO__CAMPAIGN_EVENTS": "demo-campaign-events-secret",
    "CDP_UNSUBSCRIBE_SECRET": "demo-unsubscribe-secret",
}
SANDBOX_TOKENS = {"facebook": "EAAdemo-sandbox-token", "google": "demo-google-sandbox-token"}
FACEBOOK_API_VERSION = "v21.0"
#: What the demo's feedback says happened to the first members the email reached, in order: each member's events.
FEEDBACK_PLAN: tuple[tuple[str, ...], ...] = (
    ("delivered", "opened", "clicked", "converted"),
    ("delivered", "opened", "clicked"),
    ("delivered", "opened", "unsubscribed"),
    ("delivered",),
    ("bounced",),
)
DEMO_REVENUE = Decimal("129.90")
COUNTED = ("sent", "delivered", "opened", "clicked", "bounced", "unsubscribed", "converted", "revenue")


@dataclass(frozen=True)
class Definitions:
    """The project's definition folders the demo applies."""

    segments: Path
    campaigns: Path
    contents: Path

    @classmethod
    def find(cls, root: Path) -> Definitions:
        found = cls(root / "segments", root / "campaigns", root / "contents")
        missing = [str(path) for path in (found.segments, found.campaigns, found.contents) if not path.is_dir()]
        if missing:
            raise DemoError(f"no {', '.join(missing)}: run the demo from the project's folder (make demo)")
        return found

    def campaigns_by_type(self) -> dict[str, list[dict[str, Any]]]:
        """The campaign files' contents, by destination (``type``)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.campaigns.glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "type" in data:
                found.setdefault(str(data["type"]), []).append(data)
        return found


def cdp_json(root: Path, arguments: list[str], env: Mapping[str, str]) -> Any:
    """``cdp ARGUMENTS --json`` in a process of its own; its JSON answer."""
    command = [str(environment_bin() / "cdp"), *arguments, "--json"]
    result = subprocess.run(command, cwd=root, env=meltano_env(dict(env)), check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"'cdp {' '.join(arguments)}' exited with {result.returncode}: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


#: The steps :func:`run_activation` prints.
ACTIVATION_STEPS = 4


def run_activation(
    root: Path, stack: ExitStack, postgres_url: str, env: Mapping[str, str], first_step: int, steps: int
) -> None:
    """Segments, campaigns to every destination's sandbox, feedback, metrics (the module docstring); ``env`` holds
    the zones and stores the cdp commands read; steps are numbered from ``first_step`` of ``steps``."""
    from plugins.manager import activators

    definitions = Definitions.find(root)
    tenant = ["--tenant", DEMO_TENANT]
    base_env = {**env, "CDP_POSTGRES_URL": postgres_url, "CDP_EXPORTS_URL": str(root / "data" / "exports")}
    secrets = {name: os.environ.get(name, value) for name, value in DEMO_SECRETS.items()}
    step = first_step

    console.print(
        styled((f"{step}/{steps}", "bold"), f" cdp segment apply {definitions.segments.name}/; refresh {DEMO_SEGMENT}")
    )
    applied = cdp_json(root, ["segment", "apply", *tenant, str(definitions.segments)], base_env)
    refreshed = cdp_json(root, ["segment", "refresh", DEMO_SEGMENT, *tenant, "--export", "email"], base_env)
    refresh, export = refreshed["refreshes"][0], refreshed["exports"][0]
    console.print(
        f"    segments: {len(applied['created'])} created, {len(applied['updated'])} updated, "
        f"{len(applied['unchanged'])} unchanged",
        highlight=False,
    )
    console.print(
        styled(("segment ", "bold"), DEMO_SEGMENT)
        + f": size {refresh['size']}, entered {refresh['entered']}, left {refresh['left']} (refresh "
        f"{refresh['refresh_id']}); exported for email: {export['counts']['members']} members",
        highlight=False,
    )

    step += 1
    receiver_url = _start_receiver(stack, root, {**base_env, **secrets})
    destinations = activators()
    by_type = definitions.campaigns_by_type()
    launch_env: dict[str, str] = {**base_env, **secrets}
    sandboxes: dict[str, str] = {"receiver": receiver_url}
    smtp_mailbox = root / "data" / "sandbox" / "smtp"
    smtp_before = len(_smtp_messages(smtp_mailbox))
    audience_sizes: dict[str, Any] = {}
    for name in sorted(by_type):
        if name not in destinations:
            continue
        descriptor = destinations[name]
        if name == "email":
            settings = by_type[name][0].get("settings", {})
            options = SandboxOptions(
                credentials={"dkim_selector": settings["dkim_selector"], "dkim_domain": settings["dkim_domain"]}
            )
            url = stack.enter_context(descriptor.load_sandbox()(options, "127.0.0.1", 0, mailbox=smtp_mailbox))
            port = url.rsplit(":", 1)[1]
            launch_env.update(
                CDP_EMAIL_HOST="127.0.0.1",
                CDP_EMAIL_PORT=port,
                CDP_EMAIL_STARTTLS="true",
                CDP_EMAIL_CA_FILE=str(smtp_mailbox / "ca.pem"),
                CDP_EMAIL_DKIM_PRIVATE_KEY=str(smtp_mailbox / "dkim-private.pem"),
                CDP_EMAIL_UNSUBSCRIBE_URL=receiver_url,
            )
        elif descriptor.sandbox is not None:
            token = SANDBOX_TOKENS.get(name, f"demo-{name}-token")
            audiences = ",".join(str(c.get("settings", {}).get("audience_id", "")) for c in by_type[name])
            credentials = {"access_token": token, "token": token, "audience_ids": audiences}
            app = descriptor.load_sandbox()(SandboxOptions(credentials=credentials))
            url = stack.enter_context(SandboxServer(app)).url
            endpoint = {"facebook": "BASE_URL", "google": "API_ENDPOINT"}.get(name, "BASE_URL")
            launch_env[f"CDP_{name.upper()}_ACCESS_TOKEN"] = token
            launch_env[f"CDP_{name.upper()}_{endpoint}"] = url
            audience_sizes[name] = (app, url, token, by_type[name])
        else:
            continue
        sandboxes[name] = url
    console.print(
        "    sandboxes: " + "  ".join(f"{name} {url}" for name, url in sandboxes.items()),
        highlight=False,
    )
    console.print(
        styled((f"{step}/{steps}", "bold"), " cdp campaign apply campaigns/ contents/; cdp campaign launch each")
    )
    cdp_json(root, ["campaign", "apply", *tenant, str(definitions.campaigns), str(definitions.contents)], launch_env)
    table = Table(title="campaign launches (this run)")
    for column in ("campaign", "destination", "members", "sent", "accepted", "rejected", "skipped", "in send log"):
        table.add_column(column)
    launched = [c for name in sorted(by_type) if name in sandboxes for c in by_type[name]]
    for campaign in launched:
        result = cdp_json(root, ["campaign", "launch", str(campaign["name"]), *tenant], launch_env)
        add = result["reports"].get("add", {})
        skipped = sum(value for key, value in add.items() if key.startswith("skipped_"))
        table.add_row(
            result["campaign"],
            result["destination"],
            str(result["export_counts"].get("members", "")),
            str(add.get("sent", 0)),
            str(add.get("accepted", 0)),
            str(add.get("rejected", 0)),
            str(skipped),
            str(_send_log_count(postgres_url, result["campaign"])),
        )
    console.print(table)
    received = _smtp_messages(smtp_mailbox)[smtp_before:]
    valid = sum(1 for message in received if message.get("dkim") == "pass")
    one_click = sum(1 for message in received if message.get("list_unsubscribe_signed"))
    console.print(
        f"SMTP sandbox: {len(received)} messages received this run, {valid} with a valid DKIM signature, {one_click} "
        "with List-Unsubscribe(-Post) signed",
        highlight=False,
    )
    for name, (app, url, token, campaigns) in sorted(audience_sizes.items()):
        for campaign in campaigns:
            size = _audience_size(name, app, url, token, campaign.get("settings", {}))
            console.print(f"{name} sandbox audience {campaign['settings']['audience_id']}: {size} members")

    step += 1
    console.print(
        styled((f"{step}/{steps}", "bold"), f" signed feedback events to {receiver_url}/webhooks/demo/campaign-events")
    )
    posted = _post_feedback(receiver_url, postgres_url, secrets["CDP_WEBHOOK_SECRET__DEMO__CAMPAIGN_EVENTS"])
    if posted:
        shown = ", ".join(f"{kind} {posted[kind]}" for kind in COUNTED[1:-1])
        console.print(f"feedback posted: {shown}, revenue {DEMO_REVENUE * posted['converted']} USD", highlight=False)
    else:
        console.print("feedback posted: none (the email reached nobody new in this run)", highlight=False)

    step += 1
    if has_transform_utility(root):
        command = ["run", FEEDBACK_TAP, "target-s3raw", TRANSFORM_COMMAND, LOAD_COMMAND]
        console.print(styled((f"{step}/{steps}", "bold"), f" meltano {' '.join(command)}; cdp campaign metrics"))
        run_meltano(["--log-level", "warning", *command], project_root=root, extra_env=dict(base_env))
    else:
        console.print(styled((f"{step}/{steps}", "bold"), f" meltano run {FEEDBACK_TAP} target-s3raw; transform; load"))
        run_meltano(
            ["--log-level", "warning", "run", FEEDBACK_TAP, "target-s3raw"], project_root=root, extra_env=dict(base_env)
        )
        run_cdp_command(root, ["transform", "run", *tenant], dict(base_env))
        run_cdp_command(root, ["load", "run", *tenant], dict(base_env))
    metrics = cdp_json(root, ["campaign", "metrics", *tenant], base_env)
    _print_metrics(metrics["metrics"])
    console.print(
        f"suppressions: {_suppression_count(postgres_url)} (email; {metrics['suppressed']} newly from this feedback)",
        highlight=False,
    )
    console.print(
        "A second run sends nobody twice: the segment has no new members, and the send log skips anyone it holds."
    )


def _start_receiver(stack: ExitStack, root: Path, env: Mapping[str, str]) -> str:
    """The webhook receiver on the demo's log (``data/webhooks``, what tap-webhooks drains), in-process; ``env``
    over the process's environment gives its secrets and the PostgreSQL the one-click unsubscribe writes to."""
    from plugins.webhooks.log import open_log
    from plugins.webhooks.receiver import ReceiverSettings, WebhookReceiver, registered_handlers, registered_routes

    settings = ReceiverSettings(dlq_url=env.get("CDP_DLQ_URL"), environ={**os.environ, **env})
    receiver = WebhookReceiver(
        open_log(str(root / "data" / "webhooks")), registered_handlers(), settings, registered_routes(settings)
    )
    return stack.enter_context(SandboxServer(receiver.app(), **receiver.uvicorn_options())).url


def _smtp_messages(mailbox: Path) -> list[dict[str, Any]]:
    index = mailbox / "messages.jsonl"
    if not index.exists():
        return []
    return [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]


def _audience_size(name: str, app: Any, url: str, token: str, settings: Mapping[str, Any]) -> int:
    """Members in the sandbox's audience: Facebook answers ``approximate_count`` as the Graph API does; Google's
    Data Manager API has no read of an audience, so its sandbox's state is read."""
    if name == "facebook":
        answer = httpx.get(
            f"{url}/{FACEBOOK_API_VERSION}/{settings['audience_id']}", params={"access_token": token}, timeout=10
        )
        answer.raise_for_status()
        return int(answer.json()["approximate_count"])
    audiences: Mapping[tuple[str, str, str], Any] = getattr(app.state, "audiences", {})
    return sum(len(members) for key, members in audiences.items() if key[2] == str(settings.get("audience_id")))


def _send_log_count(postgres_url: str, campaign: str) -> int:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            f"SELECT count(DISTINCT customer_id) FROM {DEMO_TENANT}.send_log "  # noqa: S608  # a constant
            "WHERE campaign = %s AND action = 'add' AND status = 'accepted'",
            (campaign,),
        ).fetchone()
    return int(row[0]) if row else 0


def _suppression_count(postgres_url: str) -> int:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {DEMO_TENANT}.suppressions").fetchone()  # noqa: S608
    return int(row[0]) if row else 0


def _post_feedback(receiver_url: str, postgres_url: str, secret: str) -> Counter[str]:
    """Signed events for the first members the email campaign reached in this run (:data:`FEEDBACK_PLAN`); the
    events posted, by type. Nobody sent this run (a second run): nothing posted."""
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            f"SELECT s.customer_id, s.variant, c.email FROM {DEMO_TENANT}.send_log s "  # noqa: S608  # a constant
            f"JOIN {DEMO_TENANT}.customers c USING (customer_id) "
            "WHERE s.campaign = %s AND s.action = 'add' AND s.status = 'accepted' "
            "AND s.run_id = (SELECT max(run_id) FROM "
            f"{DEMO_TENANT}.activation_runs WHERE campaign = %s AND dry_run = false) "
            "ORDER BY s.customer_id LIMIT %s",
            (EMAIL_CAMPAIGN, EMAIL_CAMPAIGN, len(FEEDBACK_PLAN)),
        ).fetchall()
    posted: Counter[str] = Counter()
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    for (customer_id, variant, email), kinds in zip(rows, FEEDBACK_PLAN, strict=False):
        for kind in kinds:
            event: dict[str, Any] = {
                "id": f"demo-{EMAIL_CAMPAIGN}-{customer_id}-{kind}",
                "type": kind,
                "occurred_at": now,
                "campaign": EMAIL_CAMPAIGN,
                "variant": variant,
                "customer_id": customer_id,
                "email": email,
            }
            if kind == "bounced":
                event["bounce_type"] = "hard"
            if kind == "converted":
                event.update(revenue=float(DEMO_REVENUE), currency="USD")
            body = json.dumps(event).encode()
            signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            answer = httpx.post(
                f"{receiver_url}/webhooks/{DEMO_TENANT}/{FEEDBACK_PROVIDER}",
                content=body,
                headers={"Content-Type": "application/json", "X-CDP-Signature": signature},
                timeout=10,
            )
            if answer.status_code != 200:
                raise DemoError(f"the receiver answered {answer.status_code} to a signed {kind} event: {answer.text}")
            posted[kind] += 1
    return posted


def _print_metrics(rows: list[dict[str, Any]]) -> None:
    columns = ("campaign", "variant", *COUNTED, "complaint_rate")
    table = Table(title=f"PostgreSQL {DEMO_TENANT}.campaign_metrics")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(column), column) for column in columns))
    console.print(table)
    email = [row for row in rows if row.get("campaign") == EMAIL_CAMPAIGN]
    totals = {key: sum((Decimal(str(row.get(key) or 0)) for row in email), Decimal(0)) for key in COUNTED}
    totals["revenue"] = totals["revenue"].quantize(Decimal("0.01"))
    console.print(
        f"{EMAIL_CAMPAIGN} metrics, all variants: " + ", ".join(f"{key} {value}" for key, value in totals.items()),
        highlight=False,
    )


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if column == "revenue":
        return str(Decimal(str(value)).quantize(Decimal("0.01")))
    return str(value)
