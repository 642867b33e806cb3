"""The project's own exception types.

Every user error (bad file, bad argument, incompatible model) raises a subclass of
:class:`MedSegDiffError` whose message names the file or argument and the problem, so the
CLI can print one line and exit non-zero and the GUI can show a notification.
"""

from __future__ import annotations


class MedSegDiffError(Exception):
    """Base class for errors meant to be shown to the user as one plain line."""


class InputError(MedSegDiffError, ValueError):
    """A file or argument given by the user cannot be used (names it and says why).

    ``argument``: the engine parameter at fault (``"steps"``, ``"data"``); a front end maps
    it to its own control (the CLI to ``--steps``), so engine messages name no CLI flag.
    """

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class ModelError(MedSegDiffError):
    """A model folder or checkpoint is missing, corrupt, unsafe or incompatible."""


class Cancelled(MedSegDiffError):
    """Raised inside long work when the user's cancel token was set."""
