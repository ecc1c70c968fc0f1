"""Operations on the dead letter queue: listing and statistics, crash-safe reprocessing with record mappings,
resubmission through Meltano, purging, and the audit log (``cdp dlq``).

May import: ``plugins.core``, the hook system, ``plugins.meltano`` and ``schema_registry``. Never a connector.
"""
