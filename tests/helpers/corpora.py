"""A JSON Lines corpus with bad, empty and repaired records everywhere (past any budget too),
and the manifest counts it must give, found by brute force: walk the records in the stream's
order, tokenize each document, and stop at the one the budget ends in."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.inputs.corpus_order import permutation

KINDS = ("good", "bad", "good", "empty", "repaired", "good", "bad", "bad", "good", "empty")


def write_mixed_corpus(path: Path, n_records: int = 80) -> list[tuple[str, str]]:
    """Write the corpus; return ``(kind, text)`` per record (line) in file order."""
    records, lines = [], []
    for i in range(n_records):
        kind = KINDS[i % len(KINDS)]
        text = f"record {i}: " + " ".join(f"word{i}x{j}" for j in range(3 + i % 7))
        if kind == "good":
            lines.append(json.dumps({"text": text}).encode())
        elif kind == "bad":
            lines.append(b"{broken " + str(i).encode() if i % 2 else json.dumps({"title": text}).encode())
        elif kind == "empty":
            lines.append(json.dumps({"text": "  \n "}).encode())
        else:  # invalid UTF-8 inside the text: replaced and counted
            text = text + " caf\ufffd"
            lines.append(json.dumps({"text": text[:-5]}).encode()[:-2] + b" caf\xe9\"}")
        records.append((kind, text))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return records


def expected_counts(records: list[tuple[str, str]], tokenizer, budget: int | None, order: str = "file",
                    seed: int = 0) -> dict[str, int]:
    """documents, documents_used, bad_records, empty_documents, utf8_replaced of the records up
    to the last document a context came from (all of them if the budget outlasts the corpus)."""
    walk = records if order == "file" or budget is None else [records[i] for i in permutation(len(records), seed)]
    counts = dict.fromkeys(("documents", "documents_used", "bad_records", "empty_documents", "utf8_replaced"), 0)
    left = budget
    for kind, text in walk:
        if left is not None and left <= 0:
            break
        if kind in ("bad", "empty"):
            counts["bad_records" if kind == "bad" else "empty_documents"] += 1
            continue
        counts["documents"] += 1
        counts["documents_used"] += 1
        counts["utf8_replaced"] += kind == "repaired"
        if left is not None:
            left -= len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return counts
