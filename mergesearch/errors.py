"""User-facing errors: the CLI prints these as one line and exits non-zero, never with a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, files, models) that the user can fix."""


class ConfigError(UserError):
    """A config file that does not validate; the message names the file and the field."""
