"""PySpark transforms from the raw zone to curated Parquet (registered through the ``cdp_transforms`` hook)."""
