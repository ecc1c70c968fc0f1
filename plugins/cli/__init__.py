"""The ``cdp`` command line: one typer app, one module per command group.

May import: everything in ``plugins`` and ``schema_registry`` (it is the top layer). Never a connector: plugins
contribute commands through the ``cdp_commands`` hook. Heavy modules are imported inside the commands, so ``cdp --help``
stays fast.
"""
