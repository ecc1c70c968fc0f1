"""The data plane every layer stands on: object storage and leases on it, zone URLs, the raw and DLQ layouts and
writers, the JSON Schema dialect and record validation, JSON serialisation, redaction, structured log events and the
framework's exceptions.

May import: the standard library and third-party packages only. Nothing else in ``plugins``, no connector, no
``schema_registry``. Everything else imports from here.
"""
