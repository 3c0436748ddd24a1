"""Named errors. Raised deep; turned into one-line messages only at the edges (CLI, viewer)."""


class NeuroscopeError(Exception):
    """Base class: every subclass carries a message fit to show a user as is."""


class ModelSpecError(NeuroscopeError):
    """A model spec names no model that can be loaded here."""


class CorpusError(NeuroscopeError):
    """A corpus spec or one of its records cannot be read."""


class ConfigError(NeuroscopeError):
    """A run's options contradict each other or the model."""


class IndexDirError(NeuroscopeError):
    """An index directory is missing, incomplete, or not ours to write."""


class QueryError(NeuroscopeError):
    """A user's SQL query was refused or failed."""
