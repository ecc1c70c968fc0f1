"""What every activation destination shares: the delivery engine, the send log, suppressions and their DLQ entries.

A destination (``activators/NAME/``) only sends one request at a time (its ``Sender``); :func:`deliver` does the rest
for all of them: batching at the channel's ``max_batch_size``, the rate limit, retries with backoff honouring
``Retry-After``, consent, suppression and erasure re-checked at send time, the idempotent send log (at most once per
campaign, member, variant, action and refresh), dry runs, per-member results, and ``activation_failed`` dead letters
that ``cdp dlq reprocess`` sends again. docs/writing-a-destination.md shows a destination end to end.

May import: ``plugins.core``, ``plugins.dlq``, the hook system. Never a connector.
"""

from plugins.activation.delivery import (
    ActivationBusyError,
    ActivationError,
    DeliveryReport,
    DeliverySettings,
    TokenBucket,
    deliver,
)
from plugins.activation.schema import ensure_schema
from plugins.activation.suppressions import (
    SUPPRESSION_REASONS,
    is_suppressed,
    normalize_address,
    suppress,
    suppressed_addresses,
)

__all__ = [
    "SUPPRESSION_REASONS",
    "ActivationBusyError",
    "ActivationError",
    "DeliveryReport",
    "DeliverySettings",
    "TokenBucket",
    "deliver",
    "ensure_schema",
    "is_suppressed",
    "normalize_address",
    "suppress",
    "suppressed_addresses",
]
