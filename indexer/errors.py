"""Named errors. Raised deep; turned into one-line messages only at the edges (CLI, viewer).

Layer rule: imports nothing else of the package.
"""

from __future__ import annotations

import os


class NeuroscopeError(Exception):
    """Base class: every subclass carries a message fit to show a user as is."""


class ModelSpecError(NeuroscopeError):
    """A model spec names no model that can be loaded here."""


class CorpusError(NeuroscopeError):
    """A corpus spec or one of its records cannot be read."""


class SaeError(NeuroscopeError):
    """An SAE or transcoder given with --sae cannot be read, or does not fit the model."""


class ConfigError(NeuroscopeError):
    """A run's options contradict each other or the model."""


class IndexDirError(NeuroscopeError):
    """An index directory is missing, incomplete, or not ours to write."""


class QueryError(NeuroscopeError):
    """A user's SQL query was refused or failed."""


class QueryTimeout(QueryError):
    """A query ran past its time limit; carries the SQL and the limit, and names the setting."""

    def __init__(self, sql: str, timeout_s: float, setting: str = "--timeout"):
        self.sql, self.timeout_s, self.setting = sql, timeout_s, setting
        super().__init__(f"the query ran past {timeout_s:g} s and was stopped; raise {setting} to give it longer")


class InternalError(Exception):
    """An invariant of neuroscope itself failed: a bug to report, not a user error (so the CLI
    shows it with its traceback)."""


def one_line(error: BaseException) -> str:
    """The first line of an error's message (the rest is a caret diagram, hints or a trace).

    >>> one_line(ValueError("bad input\\n  ^ here"))
    'bad input'
    """
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE=1``), as in tests and CI."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
