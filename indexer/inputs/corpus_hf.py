"""``hf:`` corpora: Hugging Face datasets from the hub (streamed), the local cache (offline),
or a local folder (``Dataset.save_to_disk`` output, or a folder of parquet/jsonl files)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from indexer.errors import CorpusError, hub_offline, one_line
from indexer.inputs.corpus_counters import CorpusCounters
from indexer.inputs.corpus_files import Span
from indexer.inputs.corpus_order import buffer_shuffled, permutation, spanned, token_ids
from indexer.inputs.corpus_spec import CorpusSpec, hf_is_local

HF_SHUFFLE_BUFFER = 10_000  # documents held by the shuffle buffer of a streamed hf: dataset


def hf_open(spec: CorpusSpec) -> Any:
    """A ``datasets`` Dataset (random access) or IterableDataset (a hub stream) for an hf: spec."""
    import datasets

    where = f"hf:{spec.location}:{spec.split}"
    if hf_is_local(spec.location):
        folder = Path(spec.location).expanduser()
        if not folder.is_dir():
            raise CorpusError(f"{where}: no such dataset folder {folder}")
        try:
            if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
                loaded = datasets.load_from_disk(str(folder))  # written by save_to_disk
                if isinstance(loaded, datasets.DatasetDict):
                    if spec.split not in loaded:
                        raise CorpusError(f"{where}: no split {spec.split!r} (splits: {', '.join(loaded)})")
                    loaded = loaded[spec.split]
                return loaded
            return datasets.load_dataset(str(folder), split=spec.split)  # parquet / jsonl / ... files
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"{where}: cannot read the dataset folder ({one_line(e)})") from None
    if hub_offline():
        try:
            return datasets.load_dataset(spec.location, split=spec.split)  # resolved from the local cache
        except Exception as e:
            raise CorpusError(
                f"{where}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1; "
                f"{one_line(e)}); download it once online, or pass hf:/path/to/dataset_dir or a file"
            ) from None
    try:
        return datasets.load_dataset(spec.location, split=spec.split, streaming=True)
    except Exception as e:  # network, missing dataset, bad split...
        raise CorpusError(f"{where}: cannot stream ({one_line(e)})") from None


def hf_records(spec: CorpusSpec, counters: CorpusCounters, skip: bool, order: str, seed: int,
               span: Span = None) -> Iterator:
    """``(doc_id, text or token ids)`` of an hf: dataset, in file order or a seeded order
    (positions ``span`` of that order only, if given)."""
    import datasets

    where = f"hf:{spec.location}:{spec.split}"
    data = hf_open(spec)
    try:
        if isinstance(data, datasets.Dataset):
            counters.documents_in_source = len(data)
            rows = np.arange(len(data)) if order == "file" else permutation(len(data), seed)
            records = ((int(i), data[int(i)]) for i in spanned(rows, span))
        else:
            records = enumerate(data)
            if order == "shuffle":
                records = buffer_shuffled(records, HF_SHUFFLE_BUFFER, seed)
            if span is not None:  # a stream: read up to the span, to no purpose but its position
                records = islice(records, span[0], span[1])
        for doc_id, record in records:
            if "tokens" in record:
                ids = token_ids(record["tokens"], f"{where}: row {doc_id}", counters, skip)
                if ids is not None:
                    yield doc_id, ids
                continue
            text = record.get("text", record.get("content"))
            yield doc_id, text if isinstance(text, str) else ""
    except CorpusError:
        raise
    except Exception as e:  # a stream that breaks mid-way
        raise CorpusError(f"{where}: cannot read ({one_line(e)})") from None


def hf_record_count(spec: CorpusSpec) -> int | None:
    """The rows of an hf: dataset that allows random access (a local folder or the cache);
    None for a hub stream, whose length is unknown."""
    import datasets

    data = hf_open(spec)
    return len(data) if isinstance(data, datasets.Dataset) else None
