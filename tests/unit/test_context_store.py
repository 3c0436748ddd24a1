"""The context store on its own: appends read back in ctx_id order, a reopen cuts it back to
the committed lengths, damage is one clear error. Loads no model."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.errors import IndexDirError
from indexer.inputs.contexts import Context
from indexer.run.context_store import INDEX_FILE, TOKENS_FILE, ContextStore, StoredContexts


def ctx(i: int, corpus: str = "code", n: int = 5, big: bool = False) -> Context:
    base = 70000 if big else 0
    return Context(i, corpus, 100 + i, np.arange(base + i, base + i + n, dtype=np.int32))


def read(folders, d_vocab=2**16, wanted=None):
    return [(c.ctx_id, c.corpus, c.doc_id, c.token_ids.tolist())
            for c in StoredContexts(folders, ["code", "prose"], d_vocab).contexts(wanted)]


def plain(contexts):
    return [(c.ctx_id, c.corpus, c.doc_id, c.token_ids.tolist()) for c in contexts]


def test_round_trip_resume_truncates_and_shards_interleave(tmp_path):
    a = [ctx(0), ctx(2, "prose", 3), ctx(4, n=1)]
    store = ContextStore(tmp_path, ["code", "prose"], 2**16)
    store.append(a[:2])
    committed = store.commit()
    store.append(a[2:])  # never committed: a resume drops it
    store.close()
    assert committed == {"contexts": 2, "tokens": 8}
    assert read([tmp_path]) == plain(a)
    store = ContextStore(tmp_path, ["code", "prose"], 2**16, committed)
    assert (tmp_path / TOKENS_FILE).stat().st_size == 8 * 2  # uint16 ids
    store.append([ctx(4, n=2)])
    store.commit()
    store.close()
    assert read([tmp_path]) == plain(a[:2] + [ctx(4, n=2)])
    other = tmp_path / "other"
    other.mkdir()
    store = ContextStore(other, ["code", "prose"], 2**16)
    store.append([ctx(1), ctx(3, "prose")])
    store.commit()
    store.close()
    assert [row[0] for row in read([tmp_path, other])] == [0, 1, 2, 3, 4]
    assert [row[0] for row in read([tmp_path, other], wanted={3, 0})] == [0, 3]


def test_wide_vocab_uses_uint32(tmp_path):
    store = ContextStore(tmp_path, ["code", "prose"], 100_000)
    store.append([ctx(0, big=True)])
    store.commit()
    store.close()
    assert read([tmp_path], 100_000) == plain([ctx(0, big=True)])


def test_damage_is_refused(tmp_path):
    store = ContextStore(tmp_path, ["code", "prose"], 2**16)
    store.append([ctx(0), ctx(1)])
    committed = store.commit()
    store.close()
    with pytest.raises(IndexDirError, match="checkpoint counts"):
        ContextStore(tmp_path, ["code", "prose"], 2**16, {"contexts": 3, "tokens": 10})
    with open(tmp_path / INDEX_FILE, "ab") as f:
        f.write(b"\0" * 8)  # half a row
    with pytest.raises(IndexDirError, match="mid-row"):
        read([tmp_path])
    ContextStore(tmp_path, ["code", "prose"], 2**16, committed).close()  # cut back: fine again
    with pytest.raises(IndexDirError, match="twice"):
        read([tmp_path, tmp_path])
    (tmp_path / TOKENS_FILE).write_bytes(b"")
    with pytest.raises(IndexDirError, match="points past"):
        read([tmp_path])
