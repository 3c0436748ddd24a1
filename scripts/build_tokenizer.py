"""Train the project's byte-level BPE tokenizer (vocab 8192) on the embedded corpora.

Run from the repository root, after scripts/build_corpora.py:

    .venv/bin/python scripts/build_tokenizer.py

Training data: every prose document plus code documents with about as many
characters, picked deterministically (code files ordered by sha256 of their path).
Special token "<|endoftext|>" is id 0 and is BOS/EOS/UNK/PAD, as in GPT-2; like
GPT-2, encoding adds no special tokens by itself.

Writes data/tokenizer/{tokenizer.json,tokenizer_config.json,special_tokens_map.json},
loadable offline with transformers.AutoTokenizer.from_pretrained("data/tokenizer").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # be gentle on the shared 2-core machine

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "data" / "corpora"
OUT_DIR = ROOT / "data" / "tokenizer"

VOCAB_SIZE = 8192
EOT = "<|endoftext|>"


def training_texts() -> list[str]:
    prose = pq.read_table(CORPORA / "prose.parquet", columns=["text"])["text"].to_pylist()
    code = pq.read_table(CORPORA / "code.parquet", columns=["text", "path"]).to_pylist()
    code.sort(key=lambda d: hashlib.sha256(d["path"].encode()).hexdigest())
    budget = sum(len(t) for t in prose)
    picked = []
    for doc in code:
        if budget <= 0:
            break
        picked.append(doc["text"])
        budget -= len(doc["text"])
    print(f"training on {len(prose)} prose + {len(picked)} code documents")
    return prose + picked


def train(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert tok.token_to_id(EOT) == 0 and tok.get_vocab_size() == VOCAB_SIZE
    return tok


def write_hf_files(tok: Tokenizer) -> None:
    """tokenizer.json plus the config files transformers needs to load it offline."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT_DIR / "tokenizer.json"))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": {
            "0": {"content": EOT, "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True},
        },
    }
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (OUT_DIR / name).write_text(json.dumps(obj, indent=2) + "\n")


def main() -> None:
    tok = train(training_texts())
    write_hf_files(tok)
    print(f"wrote {OUT_DIR.relative_to(ROOT)} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
