"""vaekit's own exception types: every error a user can cause ends in one of these."""

from __future__ import annotations


class VaekitError(Exception):
    """Base class of the errors vaekit raises for bad input; the CLI prints them in one line."""


class DataError(VaekitError, ValueError):
    """The data could not be read or does not fit what was asked of it."""


class CalibrationSizeError(DataError):
    """Too few clean examples for the false-positive rate asked: ``examples`` were given, ``needed`` are needed."""

    def __init__(self, message: str, examples: int, needed: int) -> None:
        super().__init__(message)
        self.examples, self.needed = examples, needed


class ConfigError(VaekitError, ValueError):
    """An option or a configuration value is invalid."""


class CheckpointError(VaekitError):
    """A run directory or checkpoint is missing, incomplete, corrupt or incompatible."""


class TrainingError(VaekitError):
    """Training could not go on (for example the loss kept diverging)."""
