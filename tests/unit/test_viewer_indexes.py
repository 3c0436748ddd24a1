"""Which indexes `neuroscope view DIR [DIR ...]` serves and what they are called (viewer.indexes)."""

from __future__ import annotations

import pytest

from indexer.errors import IndexDirError
from viewer.indexes import expand, from_env, names, to_env


def _index(folder):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    return folder.resolve()


def test_folders_of_indexes_expand_in_name_order_once_each(tmp_path):
    a, b = _index(tmp_path / "runs" / "b-code"), _index(tmp_path / "runs" / "a-prose")
    (tmp_path / "runs" / "notes").mkdir()  # not an index: skipped inside a folder of indexes
    c = _index(tmp_path / "solo")
    assert expand([tmp_path / "runs", c, b]) == [b, a, c]
    assert from_env(to_env([b, a, c])) == [b, a, c]


def test_clashing_folder_names_are_told_apart_by_their_parents(tmp_path):
    x, y, z = _index(tmp_path / "gpt2" / "pile"), _index(tmp_path / "pythia" / "pile"), _index(tmp_path / "code")
    assert names([x, y, z]) == {"gpt2/pile": x, "pythia/pile": y, "code": z}


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "not an index"),
])
def test_a_folder_that_holds_no_index_is_one_clear_error(tmp_path, make, needle):
    with pytest.raises(IndexDirError, match=needle):
        expand([make(tmp_path)])
