"""Errors a user can fix: the CLI prints their message as one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (arguments, files, data, environment) and its fix."""
