"""The error every backend raises for what a user can act on (its own module so that
the modules :mod:`infra.interfaces` builds on can raise it too)."""

from __future__ import annotations


class BackendError(RuntimeError):
    """A store or compute call failed in a way the user can act on.

    The message names what is missing or wrong and what to do; it never carries
    a secret. The CLI prints it without a traceback.
    """
