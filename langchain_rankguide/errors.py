"""Typed errors: every failure a user can cause or meet has its own class and a clear message."""

from __future__ import annotations


class RankGuideError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RankGuideError, ValueError):
    """A configuration file or value is invalid; the message names the field path."""


class ModelLoadError(RankGuideError):
    """A model or tokenizer could not be loaded (missing path, offline hub id, bad files)."""


class EngineError(RankGuideError):
    """The step engine was used incorrectly or met an impossible state."""


class SignalError(RankGuideError, ValueError):
    """A signal was asked for with arguments it cannot use (wrong shape, unknown name)."""


class CalibrationError(RankGuideError, ValueError):
    """A calibration file is malformed, of an unknown version, or fitted for other models."""


class InputError(RankGuideError, ValueError):
    """A question or prompt cannot be used: empty, not text, or longer than the context window."""


class CheckpointError(RankGuideError):
    """A checkpoint store cannot be opened or used: unreachable PostgreSQL, a file not SQLite.

    The message names the store with any password replaced by ``***``.
    """


class ThreadBusyError(RankGuideError):
    """A durable run's thread is being run elsewhere (another request, another worker)."""
