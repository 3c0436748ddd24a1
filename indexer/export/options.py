"""The options of ``neuroscope export``, parsed once at the edge into ``ExportOptions``.

Every bad option is one ``ConfigError`` line (argparse's own usage errors are kept for a
missing DIR or OUT only): a format name, a site list, layers, feature ranges, names that
Neuronpedia would refuse, and options that do not apply to the chosen format.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from indexer.config import parse_layers
from indexer.errors import ConfigError

FORMATS = ("neuronpedia", "neuron-record", "delphi", "headvis")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how.

    Attributes:
      format: one of FORMATS.
      sites: site names (``mlp_post``, ``sae:NAME``, ``heads``, ``heads/METRIC``); None: every
        site the format takes.
      layers: layers to export; None: all.
      features: inclusive (first, last) ranges of feature indices (neurons, latents, heads);
        None: all.
      bulk: neuronpedia only: the gzipped JSONL bulk-import layout instead of upload batches.
      model_id: the Neuronpedia model id (neuronpedia, headvis); None: from the model's name.
      source_set: neuronpedia only: the source-set name; None: ``neuroscope-SITE``.
      creator_id: neuronpedia --bulk only: the Neuronpedia user id the rows are created by.
      progress: show a progress bar.
    """

    format: str
    sites: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    features: tuple[tuple[int, int], ...] | None = None
    bulk: bool = False
    model_id: str | None = None
    source_set: str | None = None
    creator_id: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        parse_format(self.format)
        only = {"--bulk": (self.bulk, ("neuronpedia",)), "--source-set": (self.source_set, ("neuronpedia",)),
                "--creator-id": (self.creator_id, ("neuronpedia",)),
                "--model-id": (self.model_id, ("neuronpedia", "headvis"))}
        for flag, (value, formats) in only.items():
            if value and self.format not in formats:
                raise ConfigError(f"{flag} applies to --format {' or '.join(formats)}, not {self.format}")
        if self.creator_id and not self.bulk:
            raise ConfigError("--creator-id applies to --bulk (an upload is created by the API key's user)")
        for flag, value in (("--model-id", self.model_id), ("--source-set", self.source_set)):
            if value is not None and not _SLUG.match(value):
                raise ConfigError(f"{flag} {value!r}: expected lowercase letters, digits, '.' and '-' "
                                  "(Neuronpedia lowercases ids and takes no other characters)")


def parse_format(text: str | None) -> str:
    """One of FORMATS (None: the option is missing).

    >>> parse_format("delphi")
    'delphi'
    """
    if text is None:
        raise ConfigError(f"--format is required: one of {', '.join(FORMATS)}")
    if text not in FORMATS:
        raise ConfigError(f"--format {text!r}: expected one of {', '.join(FORMATS)}")
    return text


def parse_sites(text: str | None) -> tuple[str, ...] | None:
    """'all' or nothing -> None; 'mlp_post, heads' -> ('mlp_post', 'heads').

    >>> parse_sites("mlp_post, sae:x")
    ('mlp_post', 'sae:x')
    """
    if text is None or text.strip() == "all":
        return None
    sites = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not sites:
        raise ConfigError(f"--site {text!r}: expected a comma list of site names or 'all'")
    return sites


def parse_features(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """'all' or nothing -> None; '0-3,10,2' -> ((0, 3), (10, 10)): inclusive ranges, merged.

    >>> parse_features("0-3,10,2")
    ((0, 3), (10, 10))
    """
    if text is None or text.strip() == "all":
        return None
    ranges = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise ConfigError(f"--features {text!r}: expected a comma list of indices and ranges such as 0-127,300")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"--features {text!r}: the range {part} runs backwards")
        ranges.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``neuroscope export`` (parsed by ``from_args``)."""
    parser.add_argument("dir", help="the index")
    parser.add_argument("out", help="a new or empty folder (or an earlier export of the same format, replaced)")
    parser.add_argument("--format", default=None, metavar="FORMAT", help=f"one of {', '.join(FORMATS)} (required)")
    parser.add_argument("--site", default=None, metavar="S",
                        help="comma list of sites (mlp_post, sae:NAME, heads, heads/METRIC) "
                             "(default: every site the format takes)")
    parser.add_argument("--layers", default="all", help="comma list of layers (default: all)")
    parser.add_argument("--features", default="all",
                        help="feature indices (neurons, latents or heads) and ranges, e.g. 0-127,300 (default: all)")
    parser.add_argument("--bulk", action="store_true",
                        help="neuronpedia: the gzipped JSONL layout of Neuronpedia's bulk import instead of upload batches")
    parser.add_argument("--model-id", default=None, help="neuronpedia, headvis: the Neuronpedia model id "
                        "(default: the model's name, lowercased)")
    parser.add_argument("--source-set", default=None, help="neuronpedia: the source-set name (default: neuroscope-SITE)")
    parser.add_argument("--creator-id", default=None,
                        help="neuronpedia --bulk: the Neuronpedia user id that creates the rows (default: neuroscope)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def from_args(args: argparse.Namespace) -> ExportOptions:
    """ExportOptions from the parsed command line; ConfigError for a bad value."""
    return ExportOptions(
        format=parse_format(args.format), sites=parse_sites(args.site), layers=parse_layers(args.layers),
        features=parse_features(args.features), bulk=args.bulk, model_id=args.model_id,
        source_set=args.source_set, creator_id=args.creator_id, progress=not args.quiet,
    )


def slug(text: str) -> str:
    """A name Neuronpedia takes: lowercase letters, digits, '.' and '-'.

    >>> slug("Pythia-70M"), slug("sae:toy_1l"), slug("heads/max_attn")
    ('pythia-70m', 'sae-toy-1l', 'heads-max-attn')
    """
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "x"
