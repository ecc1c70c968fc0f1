"""Singer targets: where extracted records land (registered through the ``cdp_targets`` hook)."""
