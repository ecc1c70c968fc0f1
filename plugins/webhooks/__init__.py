"""The webhook receiver service (``cdp webhooks serve``) and its durable logs (files with group commit and an fsync
helper process, or PostgreSQL). Provider signature schemes come from each source's ``webhook_handler``; tap-webhooks
(``taps/webhooks``) drains the log into the raw zone.

May import: ``plugins.core``, the hook system and ``plugins.connectors`` (signing primitives). Never a connector.
"""
