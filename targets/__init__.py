"""Singer targets: where extracted records land (registered through the ``cdp_destinations`` hook)."""
