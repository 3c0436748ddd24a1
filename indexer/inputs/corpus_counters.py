"""CorpusCounters: what a corpus reader read, skipped and repaired; and the helpers that count.

Counts are exact for the documents an index covers: under a token budget the context stream
takes a ``mark()`` of the counters as it reads each document and, when the budget stops it,
``cover()``s back to the mark of the last document a context came from, so documents read
ahead (tokenized but never used) and records passed after it are not counted
(``indexer.inputs.contexts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.errors import CorpusError

# The counts that follow reading (not the settings: order, kind, documents_in_source).
READ_COUNTS = ("documents", "empty_documents", "bad_records", "utf8_replaced")


@dataclass
class CorpusCounters:
    """What was read, and what was skipped or repaired, per corpus."""

    documents: int = 0
    empty_documents: int = 0
    bad_records: int = 0
    utf8_replaced: int = 0
    bad_examples: list[str] = field(default_factory=list)
    documents_used: int = 0  # documents at least one context of the stream came from
    documents_in_source: int | None = None  # records in the source, where known
    order: str = "file"  # the order documents were read in: 'file' or 'shuffle'
    kind: str = "text"  # 'text' or 'tokens' (pre-tokenized)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "CorpusCounters":
        """Counters from a manifest's corpus entry (other keys are ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def mark(self) -> tuple[int, ...]:
        """The read counts as they are now (and how many bad examples are kept)."""
        return (*(getattr(self, k) for k in READ_COUNTS), len(self.bad_examples))

    def cover(self, mark: tuple[int, ...]) -> None:
        """Set the read counts back to an earlier ``mark()``."""
        for key, value in zip(READ_COUNTS, mark):
            setattr(self, key, value)
        del self.bad_examples[mark[-1]:]


@dataclass(frozen=True)
class BadRecord:
    """A malformed record, as a reader hands it on: counted (or refused) where the stream reaches
    it in its order, so a shuffled order places bad records among the others."""

    message: str


@dataclass(frozen=True)
class Repaired:
    """A record's text whose invalid UTF-8 was replaced, as a reader hands it on: counted in
    ``utf8_replaced`` where the stream reaches it."""

    text: str


def bad_record(counters: CorpusCounters, skip: bool, message: str) -> None:
    """A malformed record: CorpusError naming it, or (``skip``) counted with an example."""
    if not skip:
        raise CorpusError(message + " (use --skip-bad-records to skip such records)")
    counters.bad_records += 1
    if len(counters.bad_examples) < 5:
        counters.bad_examples.append(message)


def decode(data: bytes, counters: CorpusCounters) -> str:
    """UTF-8 bytes as text; invalid bytes replaced, and the record counted."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        counters.utf8_replaced += 1
        return data.decode("utf-8", errors="replace")


def valid_unicode(text: str, counters: CorpusCounters) -> str:
    """``text`` with lone surrogates (from JSON ``\\ud800`` escapes) replaced, and counted."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        counters.utf8_replaced += 1
        return text.encode("utf-8", errors="replace").decode("utf-8")
