"""WindowDecoder: the examples' context_text, byte for byte what the tokenizer decodes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.inputs.models import load_tokenizer, tokenizer_dir
from indexer.run.decode import WindowDecoder, decode_many


@pytest.fixture(scope="module")
def embedded():
    return load_tokenizer(tokenizer_dir())


def tokenizer_decode(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return [tokenizer.decode(row[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for row, n in zip(tokens.tolist(), lengths.tolist())]


def test_the_embedded_byte_level_tokenizer_takes_the_fast_path(embedded):
    assert WindowDecoder(embedded).fast


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_windows_decode_as_the_tokenizer_decodes_them(embedded, data):
    """Random windows: split UTF-8 sequences across tokens, special tokens (skipped), empty rows."""
    n_vocab = len(embedded)
    width = data.draw(st.integers(1, 12))
    rows = data.draw(st.lists(st.lists(st.integers(0, n_vocab - 1), min_size=width, max_size=width), max_size=20))
    tokens = np.array(rows, np.int32).reshape(len(rows), width)
    lengths = np.array(data.draw(st.lists(st.integers(0, width), min_size=len(rows), max_size=len(rows))), np.int64)
    assert WindowDecoder(embedded).decode(tokens, lengths) == tokenizer_decode(embedded, tokens, lengths)


def test_text_with_invalid_utf8_and_every_script_round_trips(embedded):
    text = "naïve café — 数据 🤖 <|endoftext|> é\x00\ttab"
    ids = embedded.encode(text, add_special_tokens=False)
    tokens = np.array([ids, ids[::-1]], np.int32)  # reversed: byte pieces in an invalid order
    lengths = np.array([len(ids), len(ids) - 3])
    got = WindowDecoder(embedded).decode(tokens, lengths)
    assert got == tokenizer_decode(embedded, tokens, lengths)
    assert "�" in got[1]  # the reversed bytes are not valid UTF-8: replaced, as the tokenizer does


def test_ids_beyond_the_tokenizer_and_other_tokenizers_use_the_tokenizer(embedded):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = np.array([[1, 2, len(embedded) + 5]], np.int32)  # a model vocab larger than the tokenizer's
    assert WindowDecoder(embedded).decode(tokens, np.array([3])) == decode_many(embedded, [[1, 2, len(embedded) + 5]])

    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    decoder = WindowDecoder(other)
    assert not decoder.fast
    assert decoder.decode(np.array([[1, 2]], np.int32), np.array([2])) == decode_many(other, [[1, 2]])
