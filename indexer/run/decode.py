"""Many token windows to text at once: the ``context_text`` column of the examples tables.

``tokenizer.batch_decode`` turns 60,000 windows of 57 tokens into Python lists and back, about a
second of finalize at 1M tokens. For byte-level BPE (GPT-2's family, the embedded tokenizer) a
window's text is only the concatenation of its tokens' bytes, decoded as UTF-8 with invalid
sequences replaced: ``WindowDecoder`` gathers those bytes for every window in one numpy
operation and decodes each window's slice. It checks itself against the tokenizer on a fixed
sample of random windows when built, and any other tokenizer (or one that fails the check) goes
through the tokenizer's own batch decode, so the text is always what the tokenizer would give.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from indexer.recorders.common import NJIT_OPTIONS

CHECK_SEQUENCES = 512  # random windows the fast path must decode exactly as the tokenizer does
CHECK_LENGTH = 16
CHECK_SEED = 20261202


def decode_many(tokenizer: Any, sequences: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
    """``tokenizer.batch_decode(sequences, skip_special_tokens=...,
    clean_up_tokenization_spaces=False)``, straight through the Rust backend of a fast
    tokenizer: transformers' wrapper spends seconds checking every id in Python."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if getattr(tokenizer, "is_fast", False) and hasattr(backend, "decode_batch"):
        return backend.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
    return tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens,
                                  clean_up_tokenization_spaces=False)


class WindowDecoder:
    """``decode(tokens, lengths)`` == ``decode_many(tokenizer, [row[:n] for row, n in ...])``."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.blob, self.offsets = _byte_table(tokenizer)
        if self.blob is not None and not self._agrees():
            self.blob = self.offsets = None

    @property
    def fast(self) -> bool:
        return self.blob is not None

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
        """tokens int [n, width]; lengths [n]: row i's text is that of tokens[i, :lengths[i]]."""
        if self.blob is None or (len(tokens) and int(tokens.max(initial=0)) >= len(self.offsets) - 1):
            return decode_many(self.tokenizer, _rows(tokens, lengths))
        mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
        flat = tokens[mask].astype(np.int64)
        ends = np.cumsum(np.diff(self.offsets)[flat])  # where each token's bytes end in the output
        data = _gather_bytes(self.blob, self.offsets, flat, ends).tobytes()
        bounds = np.concatenate([[0], ends])[np.concatenate([[0], np.cumsum(lengths)])].tolist()
        return [data[a:b].decode("utf-8", "replace") for a, b in zip(bounds[:-1], bounds[1:])]

    def _agrees(self) -> bool:
        rng = np.random.default_rng(CHECK_SEED)
        n_vocab = len(self.offsets) - 1
        tokens = rng.integers(0, n_vocab, size=(CHECK_SEQUENCES, CHECK_LENGTH))
        lengths = rng.integers(0, CHECK_LENGTH + 1, size=CHECK_SEQUENCES)
        tokens[:, 0] = np.arange(CHECK_SEQUENCES) % n_vocab  # every low id at least once
        want = decode_many(self.tokenizer, _rows(tokens, lengths))
        return self.decode(tokens, lengths) == want


def _rows(tokens: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    """The windows as lists of ids (one C-level ``tolist``, then slices), for the tokenizer."""
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]


@njit(**NJIT_OPTIONS)
def _gather_bytes(blob, offsets, flat, ends):
    """The bytes of tokens ``flat``, one after another (``ends``: their cumulative sizes)."""
    out = np.empty(ends[-1] if ends.shape[0] else 0, np.uint8)
    start = 0
    for i in range(flat.shape[0]):
        a = offsets[flat[i]]
        for j in range(ends[i] - start):
            out[start + j] = blob[a + j]
        start = ends[i]
    return out


def _byte_table(tokenizer: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Every token's bytes, concatenated, and where each starts (special tokens: none), for
    a fast tokenizer with a byte-level decoder; (None, None) for any other."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or type(getattr(backend, "decoder", None)).__name__ != "ByteLevel":
        return None, None
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> character map

    char_bytes = {c: b for b, c in bytes_to_unicode().items()}
    added = backend.get_added_tokens_decoder()
    pieces = []
    for i in range(backend.get_vocab_size(with_added_tokens=True)):
        if i in added and added[i].special:
            pieces.append(b"")
            continue
        token = backend.id_to_token(i)
        if token is None or any(c not in char_bytes for c in token):
            return None, None  # not a byte-level token: leave it to the tokenizer
        pieces.append(bytes(char_bytes[c] for c in token))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return np.frombuffer(b"".join(pieces), np.uint8), offsets

