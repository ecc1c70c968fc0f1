"""Exceptions the framework raises. Each message says what is wrong and what to change."""

from __future__ import annotations


class CdpError(Exception):
    """Base class for errors a user can act on; the CLI prints them as one line and exits 1."""


class ConfigError(CdpError, ValueError):
    """A setting is missing or malformed. The message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"setting '{setting}': {problem}")


class StorageError(CdpError):
    """The object store could not be reached or an object could not be read or written."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object asked for does not exist."""


class ObjectTooLargeError(StorageError):
    """An object is larger than the caller's limit (it was not read further)."""
