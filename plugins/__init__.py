"""The CDP framework: hook specifications, the plugin manager, and the runtime every connector shares.

Connectors import from here; nothing in here imports a connector. Plugins find each other through the plugin
manager (see ``plugins.manager``), never by importing one another.
"""

from plugins.hookspecs import hookimpl

__all__ = ["hookimpl"]
