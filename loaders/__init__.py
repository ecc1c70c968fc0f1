"""Loaders from curated Parquet into PostgreSQL and Elasticsearch (registered through the ``cdp_loaders`` hook)."""
