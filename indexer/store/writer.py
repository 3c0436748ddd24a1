"""Writing an index: atomic Parquet part files checked against indexer.store.schema, and the manifest.

Nothing half-written is ever visible: every file is written under a hidden temporary name in
its final folder and renamed into place (``os.replace`` is atomic within one file system).
Readers only look at ``*.parquet`` names that do not start with a dot, and the engine writes
``manifest.json`` last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.store.killpoint import kill_point
from indexer.store.manifest import MANIFEST, STATUSES, manifest_text
from indexer.store.table import Table, valid_partition_value

_PART_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
Columns = Mapping[str, Any] | pa.Table | Sequence[Table]


@contextlib.contextmanager
def atomic_open(path: Path | str, point: str | None = None) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once the ``with`` block ends without error.

    ``point`` names the test kill point (indexer.store.killpoint) hit before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the rename never crosses file systems; a dot so no glob sees it.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the name points at it
        if point:
            kill_point(point)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes, point: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically (e.g. a checkpoint); ``point``: a test kill point
    hit when half of the data is written."""
    with atomic_open(path) as f:
        half = len(data) // 2
        f.write(data[:half])
        if point:
            f.flush()
            kill_point(point)
        f.write(data[half:])


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


MAX_QUEUED = 2  # write_soon files queued per writer thread before the caller waits


class IndexWriter:
    """Writes the tables of one index directory.

    ``write`` puts one part file per call; several calls with different ``part`` names build a
    partition from pieces (e.g. one part per shard). The writer never deletes anything:
    refusing or clearing a non-empty folder is the engine's decision (--resume, --overwrite).
    """

    def __init__(self, out_dir: Path | str, threads: int = 0):
        self.root = Path(out_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="parquet") if threads else None
        self._threads = threads
        self._pending: list[Future] = []

    def write(
        self,
        table_cls: type[Table],
        columns: Columns,
        partition: Mapping[str, Any] | None = None,
        part: str = "part-0",
    ) -> Path:
        """Check ``columns`` against ``table_cls`` and write them; returns the file's path.

        ``columns`` maps column names to array-likes (lists, 1-D numpy arrays, 2-D numpy arrays
        for list columns, pyarrow arrays) or to one scalar for every row; or it is a pyarrow
        Table or a list of ``table_cls`` rows. Partition columns may be left out: they are
        filled from ``partition``. Optional columns left out are null.
        """
        partition = dict(partition or {})
        _check_partition(table_cls, partition, part)
        table = to_arrow(table_cls, columns, partition)
        return self._write_file(table_cls, table, table_cls.path(self.root, partition, part))

    def write_soon(self, table_cls: type[Table], columns: Columns, partition: Mapping[str, Any] | None = None,
                   parts: int = 1) -> None:
        """``write`` as ``parts`` files (``part-0`` ...: consecutive row ranges), encoded and
        compressed on the writer's threads (pyarrow does that without the GIL) while the caller
        builds the next table. The columns are checked here; ``wait`` reports a failed write."""
        partition = dict(partition or {})
        _check_partition(table_cls, partition, "part-0")
        table = to_arrow(table_cls, columns, partition)
        step = -(-table.num_rows // parts) if table.num_rows else 1
        for i in range(parts):
            if i and i * step >= table.num_rows:
                break
            path = table_cls.path(self.root, partition, f"part-{i}")
            piece = table.slice(i * step, step)
            if self._pool is None:
                self._write_file(table_cls, piece, path)
            else:
                self._hold_back()
                self._pending.append(self._pool.submit(self._write_file, table_cls, piece, path))

    def _hold_back(self) -> None:
        """Wait while ``MAX_QUEUED`` files per thread are queued: memory holds a few tables,
        not every table a finalize builds (all of a large model's example windows)."""
        while sum(not f.done() for f in self._pending) >= MAX_QUEUED * self._threads:
            next(f for f in self._pending if not f.done()).exception()  # waits for it; wait() reports

    def wait(self) -> None:
        """Block until every ``write_soon`` file is written; the first failure is raised."""
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]  # waits for every one, failed or not
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()

    @staticmethod
    def _write_file(table_cls: type[Table], table: pa.Table, path: Path) -> Path:
        with atomic_open(path, point="parquet-write") as f:
            pq.write_table(table, f, compression="zstd", row_group_size=table_cls.ROW_GROUP_ROWS,
                           use_dictionary=[n for n in table.column_names if n not in table_cls.PLAIN_COLUMNS])
        return path

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifest.json`` atomically. It must say ``"status": "complete" | "partial"``."""
        self.wait()  # the manifest says the index is whole: only once every table is on disk
        if manifest.get("status") not in STATUSES:
            raise ValueError(f"manifest status={manifest.get('status')!r} but expected one of {STATUSES}")
        text = manifest_text(manifest)
        path = self.root / MANIFEST
        atomic_write_bytes(path, text.encode(), point="manifest-write")
        return path


def to_arrow(table_cls: type[Table], columns: Columns, partition: Mapping[str, Any]) -> pa.Table:
    """``columns`` as a pyarrow Table with exactly ``table_cls``'s schema, or a ValueError."""
    given = _as_dict(table_cls, columns)
    n = _n_rows(table_cls, given)
    for col, value in partition.items():
        given.setdefault(col, value)
    for col, values in given.items():
        if _is_scalar(values):  # one value for every row, like the partition columns
            given[col] = [values] * n
    _check_names(table_cls, given)
    arrays = []
    for field in table_cls.schema():
        values = given.get(field.name)
        arrays.append(pa.nulls(n, field.type) if values is None else _array(table_cls, field, values))
        if len(arrays[-1]) != n:
            raise ValueError(f"{table_cls.NAME}.{field.name} has {len(arrays[-1])} rows but expected {n}")
    table = pa.Table.from_arrays(arrays, schema=table_cls.schema())
    for col, value in partition.items():
        _check_constant(table_cls, table, col, value)
    return table


def _as_dict(table_cls: type[Table], columns: Columns) -> dict[str, Any]:
    if isinstance(columns, pa.Table):
        return {name: columns.column(name) for name in columns.column_names}
    if isinstance(columns, Mapping):
        return dict(columns)
    rows = list(columns)
    if any(not isinstance(r, table_cls) for r in rows):
        raise ValueError(f"{table_cls.NAME}: rows must be {table_cls.__name__} instances")
    return {f.name: [getattr(r, f.name) for r in rows] for f in dataclasses.fields(table_cls)}


def _n_rows(table_cls: type[Table], given: Mapping[str, Any]) -> int:
    for values in given.values():
        if values is not None and not _is_scalar(values):
            return len(values)
    if not given:
        return 0
    raise ValueError(f"{table_cls.NAME}: no column is an array; cannot tell the number of rows")


def _is_scalar(values: Any) -> bool:
    return isinstance(values, (str, bytes, int, float, bool, np.generic))


def _check_names(table_cls: type[Table], given: Mapping[str, Any]) -> None:
    required = set(table_cls.columns()) - table_cls.optional_columns()
    missing = sorted(required - set(given))
    extra = sorted(set(given) - set(table_cls.columns()))
    if missing or extra:
        parts = (("missing", missing), ("unexpected", extra))
        found = ", ".join(f"{what} columns {cols}" for what, cols in parts if cols)
        expected = ", ".join(f"{f.name}: {f.type}" for f in table_cls.schema())
        raise ValueError(f"{table_cls.NAME}: {found}; expected {expected}")


def _array(table_cls: type[Table], field: pa.Field, values: Any) -> pa.Array:
    """One column converted to the field's type; checked casts only (no silent overflow)."""
    try:
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            return values.cast(field.type)
        if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_list(field.type):
            # [rows, width] -> one list of `width` values per row
            flat = pa.array(values.reshape(-1), type=field.type.value_type)
            return pa.FixedSizeListArray.from_arrays(flat, values.shape[1]).cast(field.type)
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as e:
        raise ValueError(f"{table_cls.NAME}.{field.name}: cannot store as {field.type}: {e}") from e


def _check_partition(table_cls: type[Table], partition: Mapping[str, Any], part: str) -> None:
    if set(partition) != set(table_cls.PARTITIONS):
        raise ValueError(
            f"{table_cls.NAME}: partition keys {sorted(partition)} but expected {list(table_cls.PARTITIONS)}"
        )
    for col, value in partition.items():
        if not valid_partition_value(value):
            raise ValueError(f"{table_cls.NAME}: partition {col}={value!r} but expected letters, digits, _.+-")
    if not _PART_NAME.match(part):
        raise ValueError(f"part={part!r} but expected letters, digits, _.-")


def _check_constant(table_cls: type[Table], table: pa.Table, col: str, value: Any) -> None:
    # The hive path and the column inside the file must agree, or DuckDB and pandas disagree.
    expected = pa.scalar(value).cast(table.schema.field(col).type)
    found = pc.unique(table.column(col)).to_pylist()
    if found and found != [expected.as_py()]:
        raise ValueError(f"{table_cls.NAME}.{col} holds {found[:5]} but the partition says {col}={value!r}")
