"""Guards of a run: a memory estimate checked before any compute, and failed writes turned
into one line that says what is kept.

The estimate counts what the options size, per feature of every planned site: the recorder
states (top-k, the quantile sampler's fine-bin counts and per-fine-bin samples, stats and
histogram; twice, for a checkpoint's copy),
the examples' windows at finalize (``window_before + window_after + 1`` values and token ids
per example), and the activations of one batch. It is an estimate of the index's own memory,
not of the model's; it is printed at start-up and a run whose estimate exceeds the memory
available is refused unless ``--allow-large`` is given.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from indexer.config import IndexConfig
from indexer.errors import ConfigError, IndexDirError, NeuroscopeError

N_FINE = 2561  # indexer.recorders.finebins.N_FINE: fine value bins per feature (tests check they agree)
POOL_PER_SAMPLE = 5  # indexer.recorders.sample_windows.POOL_PER_SAMPLE (tests check they agree)
ENTRY_BYTES = 24  # value f32 + ctx_id i64 + pos i32 + priority i64, as the recorders keep them
STATS_BYTES = 2 * 8 + 2 * 5 * 8 + 2 * 4  # count, n_active; exact sums of x and x**2 (5 words each); min, max


def memory_estimate(cfg: IndexConfig, n_features: int, ctx_len: int) -> dict[str, int]:
    """Bytes, by part, that the options make the run hold at once for ``n_features`` features."""
    bins = len(cfg.quantiles) + 1
    examples = cfg.top_k + bins * cfg.per_bin
    # top-k entries, then per fine bin a count, a cached threshold and per_bin sample entries,
    # then stats (the histogram is summed from the fine counts)
    window = cfg.window_before + cfg.window_after + 1
    # (+ each top-k entry's window of float32 values, captured while streaming)
    per_feature = (cfg.top_k * (ENTRY_BYTES + window * 4) + N_FINE * (8 + 4 + cfg.per_bin * ENTRY_BYTES)
                   + STATS_BYTES)
    # (+ the pool of captured sample windows, indexer.recorders.sample_windows)
    per_feature += POOL_PER_SAMPLE * bins * cfg.per_bin * (window * 4 + 8 + 8 + 4 + 4)
    recorders = n_features * per_feature * 2
    windows = n_features * examples * window * (4 + 4) * 2
    batch = cfg.batch_size * ctx_len * n_features * 4 * 3
    return {"recorders": recorders, "windows": windows, "batch": batch, "total": recorders + windows + batch}


def available_memory() -> int | None:
    """Bytes of memory this process may still use: MemAvailable, capped by a cgroup limit."""
    found = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found = min(found or 1 << 62, int(limit) - used)
    if found is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return found


def check_memory(cfg: IndexConfig, n_features: int, ctx_len: int, available: int | None = None,
                 quiet: bool = False) -> dict[str, int]:
    """Print the estimate; ConfigError (with it) if it exceeds the memory available."""
    estimate = memory_estimate(cfg, n_features, ctx_len)
    available = available_memory() if available is None else available
    text = (f"memory estimate {_size(estimate['total'])} (recorders {_size(estimate['recorders'])}, "
            f"example windows {_size(estimate['windows'])}, one batch {_size(estimate['batch'])}; "
            f"{n_features} features)")
    if not quiet:
        print(f"neuroscope: {text}; {_size(available) if available else 'unknown'} available", file=sys.stderr)
    if available is not None and estimate["total"] > available and not getattr(cfg, "allow_large", False):
        raise ConfigError(
            f"{text} exceeds the {_size(available)} available; lower --top-k, --per-bin, --window-before/after "
            "or --batch-size, or pass --allow-large"
        )
    return estimate


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@contextlib.contextmanager
def failed_writes_explained(out: Path, what: str) -> Iterator[None]:
    """Turn an OSError of a write (full disk, read-only folder, size limit) into one
    IndexDirError naming the folder and saying what is kept."""
    try:
        yield
    except NeuroscopeError:
        raise
    except OSError as e:
        where = e.filename or out
        raise IndexDirError(
            f"{what} failed writing {where}: {e.strerror or e}; the last good checkpoint (if any) and other files "
            "are kept: fix the cause, then rerun with --resume"
        ) from None
