"""The runtime every connector shares: the tap runtime (retries, throttling, the DLQ on failure, run budgets), the
sandbox server and its fault plan, seeded synthetic data, webhook signing primitives, and the test harness.

May import: ``plugins.core`` and the hook system (``plugins.hookspecs``, ``plugins.descriptors``, ``plugins.manager``,
``plugins.context``, ``plugins.alerts``). Never a connector (``taps``, ``targets``, ``transforms``, ``loaders``,
``activators``).
"""
