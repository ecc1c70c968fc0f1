"""Source taps: one sub-package per provider, each registered through the ``cdp`` entry-point group."""
