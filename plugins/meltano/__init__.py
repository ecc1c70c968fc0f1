"""Meltano glue: finding the project (meltano.yml) and running Meltano from the project's own environment.

May import: ``plugins.core``. Never a connector.
"""
