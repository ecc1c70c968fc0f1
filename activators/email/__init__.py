"""The email destination (``cdp_activators``: ``email``): campaigns by SMTP to any relay, DKIM-signed, with RFC 8058
one-click unsubscribe served by the webhook receiver.

sender.py sends, unsubscribe.py signs the links and serves them, sandbox.py is the SMTP relay that checks it all;
docs/activation.md#email says how to set it up.
"""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import ActivatorDescriptor, ChannelLimits

#: Messages per SMTP session. Relays cap a session (SendGrid suggests at most 100 messages per connection).
MAX_MESSAGES_PER_SESSION = 100

_SECRET = {"type": "string", "secret": True}

SETTINGS_SCHEMA = {
    "type": "object",
    "required": ["host", "from_address", "postal_address", "unsubscribe_url", "dkim_selector", "dkim_domain"],
    "properties": {
        "host": {"type": "string", "title": "SMTP relay host"},
        "port": {"type": "integer", "default": 587, "description": "587 with starttls, 465 with ssl."},
        "starttls": {"type": "boolean", "default": True, "description": "Upgrade the session with STARTTLS."},
        "ssl": {"type": "boolean", "default": False, "description": "Implicit TLS from the first byte (port 465)."},
        "username": {"type": "string", "description": "SMTP AUTH user; no AUTH when empty."},
        "password": {**_SECRET, "description": "SMTP AUTH password; else CDP_EMAIL_PASSWORD."},
        "from_address": {"type": "string", "description": "The From address; its domain names the Message-IDs."},
        "from_name": {"type": "string", "default": ""},
        "postal_address": {"type": "string", "description": "The sender's postal address, in every footer."},
        "dkim_selector": {"type": "string", "description": "The DKIM selector (s=): {selector}._domainkey.{domain}"},
        "dkim_domain": {"type": "string", "description": "The signing domain (d=), aligned with From for DMARC."},
        "dkim_private_key": {
            **_SECRET,
            "description": "DKIM RSA key: PEM or a PEM file; else CDP_EMAIL_DKIM_PRIVATE_KEY.",
        },
        "unsubscribe_url": {
            "type": "string",
            "description": "The webhook receiver's public HTTPS base URL: {url}/unsubscribe/{tenant}/{token}.",
        },
        "unsubscribe_mailto": {"type": "string", "description": "An address for mailto: unsubscribes (optional)."},
        "rate": {"type": "number", "default": 0, "description": "Messages per second at most (0: no limit)."},
        "timeout_seconds": {"type": "number", "default": 30},
        "ca_file": {"type": "string", "description": "CA bundle to trust for the relay's TLS (a sandbox's)."},
        "tenant": {"type": "string", "description": "Set by the campaign launch."},
        "campaign": {"type": "string", "description": "Set by the campaign launch."},
    },
}


@hookimpl
def cdp_activators() -> list[ActivatorDescriptor]:
    return [
        ActivatorDescriptor(
            name="email",
            sender="activators.email.sender:EmailSender",
            limits=ChannelLimits(max_batch_size=MAX_MESSAGES_PER_SESSION, requests_per_second=10.0),
            channel="email",
            content=True,
            description="Campaign email by SMTP to any relay: DKIM, one-click unsubscribe, a session per batch.",
            settings_schema=SETTINGS_SCHEMA,
            sandbox_server="activators.email.sandbox:sandbox_server",
            sandbox_port=2525,
            sandbox_alias="smtp",
            receiver_routes="activators.email.unsubscribe:receiver_routes",
        )
    ]
