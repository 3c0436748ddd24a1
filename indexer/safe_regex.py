"""Regexes from users that cannot hang anything, and which tokens a regex "ends at".

A pattern runs on RE2 (``google-re2``, linear time, no backtracking) whenever RE2 accepts it.
Patterns RE2 refuses (backreferences, lookaround, possessive quantifiers...) run on Python's
``re`` in a child process that is killed after ``time_limit_s``: a catastrophically
backtracking pattern ends with ``RegexError("... stopped after N s ...")``, never a hang.
Either way ``engine_note`` is a one-line message saying which engine ran and why.

Token semantics: a pattern *matches at* a token when the text up to the end of that token
ends with a match (``(?:PATTERN)\\z``), looking back at most ``LOOKBACK`` characters. This is
what a causal model can see: the neuron at a token knows the text so far, not what follows.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.errors import NeuroscopeError

LOOKBACK = 128  # characters of text before a token's end that a match may start in
DEFAULT_TIME_LIMIT_S = 10.0


class RegexError(NeuroscopeError):
    """A user's pattern is invalid or ran past its time limit."""


@dataclass(frozen=True)
class SafePattern:
    """A compiled user pattern and the engine that runs it."""

    pattern: str
    engine: str  # 're2' or 're'
    engine_note: str
    time_limit_s: float

    def token_masks(self, token_strs: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """For each sequence of token strings: bool [len] - does the pattern match at each token?"""
        if self.engine == "re2":
            return token_masks(_compile_re2(self.pattern), token_strs)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            job = pool.apply_async(_masks_with_re, (self.pattern, [list(t) for t in token_strs]))
            try:
                return job.get(timeout=self.time_limit_s)
            except multiprocessing.TimeoutError:
                pool.terminate()
                raise RegexError(
                    f"the pattern {self.pattern!r} was stopped after {self.time_limit_s:g} s (catastrophic "
                    "backtracking on Python's re; RE2 syntax, without backreferences or lookaround, runs in linear time)"
                ) from None


def compile_pattern(pattern: str, time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> SafePattern:
    """Check a user pattern and choose its engine; RegexError if neither engine accepts it."""
    if not pattern:
        raise RegexError("the pattern is empty")
    try:
        _compile_re2(pattern)
        return SafePattern(pattern, "re2", "ran on RE2 (linear time)", time_limit_s)
    except Exception as re2_error:  # re2 raises its own error class
        reason = _re2_reason(re2_error)
    try:
        re.compile(pattern)
        re.compile(f"(?:{pattern})\\Z")
    except re.error as e:
        raise RegexError(f"invalid pattern {pattern!r}: {e}") from None
    note = f"RE2 cannot run it ({reason}); ran on Python's re with a {time_limit_s:g} s limit"
    return SafePattern(pattern, "re", note, time_limit_s)


def token_masks(compiled, token_strs: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Anchored-at-end matching of a compiled ``(?:P)\\z`` pattern at every token end."""
    masks = []
    for tokens in token_strs:
        text = "".join(tokens)
        ends = np.cumsum([len(t) for t in tokens])
        mask = np.zeros(len(tokens), bool)
        for i, end in enumerate(ends):
            if i and ends[i - 1] == end:  # an empty token ends where the previous one did
                mask[i] = mask[i - 1]
                continue
            mask[i] = compiled.search(text[max(0, end - LOOKBACK) : end]) is not None
        masks.append(mask)
    return masks


def region_masks(pattern: str, token_strs: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """For each sequence of token strings: bool [len] - does the token overlap a match of a
    library pattern anywhere in the sequence's text (RE2, unanchored, non-empty matches)?

    The question the regex library asks ("is this token inside a base64 run, a URL, a number?"):
    a base64 run is a run whether or not its first 16 characters have been read yet."""
    compiled = _compile_re2(pattern, anchored=False)
    masks = []
    for tokens in token_strs:
        ends = np.cumsum([len(t) for t in tokens])
        starts = ends - np.array([len(t) for t in tokens], dtype=ends.dtype)
        mask = np.zeros(len(tokens), bool)
        for m in compiled.finditer("".join(tokens)):
            if m.end() > m.start():  # tokens with start < match end and end > match start (empty tokens: none)
                mask[np.searchsorted(ends, m.start(), side="right"):np.searchsorted(starts, m.end(), side="left")] = True
        masks.append(mask & (ends > starts))
    return masks


def region_hits(pattern: str, token_strs: Sequence[Sequence[str]], at: Sequence[int]) -> np.ndarray:
    """bool [len(token_strs)]: ``region_masks(pattern, token_strs)[i][at[i]]`` for every i,
    without the whole masks: one token per sequence is asked about (a top example's)."""
    compiled = _compile_re2(pattern, anchored=False)
    out = np.zeros(len(token_strs), bool)
    for i, (tokens, k) in enumerate(zip(token_strs, at)):
        start = sum(map(len, tokens[:k]))
        end = start + len(tokens[k])
        if end == start:
            continue
        for m in compiled.finditer("".join(tokens)):
            if m.start() >= end:
                break
            if m.end() > start and m.end() > m.start():
                out[i] = True
                break
    return out


def compile_trusted(pattern: str):
    """A library pattern, compiled once for anchored-at-end matching (RE2; no time limit needed)."""
    return _compile_re2(pattern)


def _compile_re2(pattern: str, anchored: bool = True):
    import re2

    options = re2.Options()
    options.log_errors = False  # else RE2 prints its own multi-line complaint to stderr
    plain = re2.compile(pattern, options)  # alone first: a pattern like `a)|(b` must not escape the group
    return re2.compile(f"(?:{pattern})\\z", options) if anchored else plain


def _re2_reason(error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).splitlines()[0] if str(text) else type(error).__name__


def _masks_with_re(pattern: str, token_strs: list[list[str]]) -> list[np.ndarray]:
    return token_masks(re.compile(f"(?:{pattern})\\Z"), token_strs)
