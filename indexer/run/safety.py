"""Guards of a run: a memory estimate checked before any compute, and failed writes turned
into one line that says what is kept.

The estimate counts what the options size, per feature of every planned site: the recorder
states (top-k, the quantile sampler's fine-bin counts and kept tokens, stats and histogram;
plus the widest site's again, for the copy a checkpoint makes while writing it),
the examples' windows at finalize (``window_before + window_after + 1`` values and token ids
per example), and the activations of one batch. It is an estimate of the index's own memory,
not of the model's; it is printed at start-up and a run whose estimate exceeds the memory
available is refused unless ``--allow-large`` is given. Recorders on an accelerator are
checked there too: each device's recorder states and one batch against what the loaded
model left free on it. The sample-window pool grows into spare memory, the host's or, on
accelerators, theirs (choose_pool).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.config import IndexConfig
from indexer.errors import ConfigError, IndexDirError, NeuroscopeError

N_FINE = 2561  # indexer.recorders.finebins.N_FINE: fine value bins per feature (tests check they agree)
POOL_PER_SAMPLE = 2.7  # indexer.recorders.sample_windows.POOL_PER_SAMPLE (tests check they agree)
AUTO_POOL_MAX = 6.0  # --window-pool auto: entries per sample the pool grows to where memory allows
AUTO_POOL_SHARE = 0.5  # ... while the whole estimate stays under this share of the memory available
QUEUED_SITES = 3  # a site's table being built and those queued: indexer.store.writer.MAX_QUEUED + 1 (tests check they agree)
KEPT_PER_SAMPLE = 144  # indexer.recorders.keep_rule.pool_capacity(per_bin) / per_bin (tests check they agree)
SHORT_CONTEXT = 1 << 15  # indexer.recorders.common.SHORT_CONTEXT: positions are int16 up to it, else int32
ENTRY_BYTES = 8  # a top-k entry: value f32 + ctx_id i32, and its position
KEPT_BYTES = 8  # a kept token: value f32 + ctx_id i32 (its priority is recomputed), and its position
SAMPLE_WINDOW_BYTES = 4  # a captured sample window: ctx_id i32 (priority and fine bin are recomputed), its
# position and its window
STATS_BYTES = 2 * 8 + 2 * 5 * 8 + 2 * 4  # count, n_active; exact sums of x and x**2 (5 words each); min, max
TORCH_STEP_ELEMENTS = (1 << 22) * 8  # recorders.quantiles_torch.ELEMENTS_PER_STEP x common.ACCELERATOR_STEP_SCALE (tests check)
TORCH_STEP_BYTES = 96  # the torch recorders' temporaries per element of a step, at their peak (93 measured)
LOWER = "lower --top-k, --per-bin, --window-before/after, --window-pool or --batch-size"  # what a refusal suggests
LIBRARIES = 400 << 20  # Python, torch, TransformerLens, transformers and the numba kernels, loaded (0.40 GB measured)


def pool_per_sample(cfg: IndexConfig) -> float:
    """The sample-window pool's entries per sample that ``--window-pool`` fixes (auto: its floor)."""
    return POOL_PER_SAMPLE if cfg.window_pool == "auto" else float(cfg.window_pool)


def choose_pool(cfg: IndexConfig, available: int | None, on_cpu: bool = True,
                devices: dict[str, tuple[int, dict[str, int]]] | None = None, **shape: Any) -> float:
    """Entries per sample for the run: ``--window-pool`` if a number; auto: the largest from
    POOL_PER_SAMPLE to AUTO_POOL_MAX, in tenths, that leaves room, the floor where the memory
    is unknown. Room: on the CPU, the whole estimate (``shape``: as memory_estimate takes it)
    under AUTO_POOL_SHARE of ``available``; where the recorders live on accelerators,
    ``devices`` (device -> (bytes free after the model, the shape of its sites as
    device_need takes it)): each device's need under AUTO_POOL_SHARE of its free bytes."""
    if cfg.window_pool != "auto":
        return pool_per_sample(cfg)
    if on_cpu and available is not None:
        def fits(pool: float) -> bool:
            return memory_estimate(cfg, pool=pool, **shape)["total"] <= AUTO_POOL_SHARE * available
    elif not on_cpu and devices:
        def fits(pool: float) -> bool:
            return all(device_need(cfg, shape["ctx_len"], pool=pool, **sites) <= AUTO_POOL_SHARE * free
                       for free, sites in devices.values())
    else:
        return POOL_PER_SAMPLE
    tenths = range(round(10 * AUTO_POOL_MAX), round(10 * POOL_PER_SAMPLE), -1)
    return next((t / 10 for t in tenths if fits(t / 10)), POOL_PER_SAMPLE)


def device_need(cfg: IndexConfig, ctx_len: int, n_features: int, largest_site: int, heads: int = 0,
                pool: float | None = None) -> int:
    """Bytes an accelerator holds for the sites on it, besides the model's weights: their
    recorder states (a checkpoint copies to the host), the transients of one batch of its
    widest site (``heads``: as memory_estimate takes it) and the torch recorders' of a step."""
    est = memory_estimate(cfg, n_features, ctx_len, largest_site=largest_site, heads=heads, pool=pool)
    step = min(cfg.batch_size * ctx_len * largest_site, TORCH_STEP_ELEMENTS) * TORCH_STEP_BYTES
    return n_features * est["per_feature"] + est["batch"] + step


def accelerators(placed: list[tuple[str, int, int]]) -> dict[str, tuple[int, dict[str, int]]]:
    """Sites placed as (device, features, heads whose pattern it reads: 0 if none), grouped
    by accelerator: device -> (bytes free there now, its sites' shape as device_need takes
    it); devices whose free memory is unknown (the CPU) are left out."""
    devices: dict[str, tuple[int, dict[str, int]]] = {}
    for device, n_features, heads in placed:
        free = devices[device][0] if device in devices else device_free_memory(device)
        if free is not None:
            sites = devices.setdefault(device, (free, {"n_features": 0, "largest_site": 0, "heads": 0}))[1]
            sites["n_features"] += n_features
            sites["largest_site"] = max(sites["largest_site"], n_features)
            sites["heads"] = max(sites["heads"], heads)
    return devices


def device_free_memory(device: str) -> int | None:
    """Bytes free on an accelerator now (the model loaded), or None where unknown."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return None


def memory_estimate(cfg: IndexConfig, n_features: int, ctx_len: int, largest_site: int | None = None,
                    model_bytes: int = 0, heads: int = 0, pool: float | None = None) -> dict[str, Any]:
    """Bytes, by part, that the options make the run hold at once for ``n_features`` features
    (``largest_site``: the features of the widest site, whose state a checkpoint copies while
    writing it; default all of them; ``model_bytes``: the weights; ``heads``: the attention
    heads of a layer whose pattern a heads site reads, 0 if none; ``pool``: the sample-window
    pool's entries per sample, default ``pool_per_sample(cfg)``).

    The peak is the libraries and the model plus the larger of the stream (the whole recorder state, one site's
    checkpoint copy, one batch's transients) and finalize (a single run keeps only the fine
    counts, stats and top-k entries of the state once the examples are collected; a shard keeps
    all of it for merge; every example's window; one batch's transients)."""
    bins = len(cfg.quantiles) + 1
    examples = cfg.top_k + bins * cfg.per_bin
    window = cfg.window_before + cfg.window_after + 1
    largest = n_features if largest_site is None else largest_site
    pos = 2 if ctx_len <= SHORT_CONTEXT else 4
    # top-k entries with each one's window of float32 values, captured while streaming;
    # the quantile sampler's int32 fine counts and its pool of kept tokens; stats
    per_feature = (cfg.top_k * (ENTRY_BYTES + pos + window * 4) + N_FINE * 4
                   + KEPT_PER_SAMPLE * cfg.per_bin * (KEPT_BYTES + pos) + 8 + STATS_BYTES)
    # (+ the pool of captured sample windows, indexer.recorders.sample_windows)
    pool = pool_per_sample(cfg) if pool is None else pool
    per_feature += math.ceil(round(pool * bins * cfg.per_bin, 9)) * (SAMPLE_WINDOW_BYTES + pos + window * 4)
    # a checkpoint writes one site at a time: its copy of that site's state (since the recorders'
    # own arrays are written, only the quantile sampler's sparse state is a copy; the term still
    # counts the whole site, and the GPT-2-small shape's measured peak is 2% over the estimate)
    recorders = (n_features + largest) * per_feature
    kept = n_features * (per_feature if cfg.shard[1] > 1 else N_FINE * 4 + cfg.top_k * (ENTRY_BYTES + pos) + 8 + STATS_BYTES)
    # every example's window (int32 token ids, float32 values), and the tables of the site being
    # written and of those queued, with their own copies of its windows
    windows = (n_features + min(n_features, QUEUED_SITES * largest) * 2) * examples * window * (4 + 4)
    # one site's activations at a time, as float32, plus the recorders' per-batch temporaries;
    # a heads site's pattern [batch, head, q, k] with the eager attention's and the metrics' temporaries
    batch = cfg.batch_size * ctx_len * largest * 4 * 3 + cfg.batch_size * heads * ctx_len * ctx_len * 4 * 3
    stream, finalize = recorders + batch, kept + windows + batch
    base = LIBRARIES + model_bytes
    return {"recorders": recorders, "windows": windows, "batch": batch, "model": model_bytes,
            "stream": base + stream, "finalize": base + finalize,
            "total": base + max(stream, finalize), "per_feature": per_feature, "pool_per_sample": pool}


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
                 quiet: bool = False, largest_site: int | None = None, model_bytes: int = 0,
                 heads: int = 0, on_cpu: bool = True,
                 devices: dict[str, tuple[int, dict[str, int]]] | None = None) -> dict[str, Any]:
    """Choose the sample-window pool (choose_pool) and print the estimate with it; ConfigError
    (with it) if it exceeds the memory available, or an accelerator's need (``devices``: as
    choose_pool takes them) its free bytes. ``estimate["pool_per_sample"]``: the choice."""
    available = available_memory() if available is None else available
    shape = dict(n_features=n_features, ctx_len=ctx_len, largest_site=largest_site, model_bytes=model_bytes,
                 heads=heads)
    estimate = memory_estimate(cfg, **shape, pool=choose_pool(cfg, available, on_cpu, devices, **shape))
    text = (f"memory estimate {estimate_text(estimate)}; {n_features} features, {estimate['per_feature'] / 1024:.1f} KB "
            f"each (window pool: {estimate['pool_per_sample']:g} entries per sample)")
    if not quiet:
        print(f"neuroscope: {text}; {size_text(available) if available else 'unknown'} available", file=sys.stderr)
    large = getattr(cfg, "allow_large", False)
    if available is not None and estimate["total"] > available and not large:
        raise ConfigError(
            f"{text} exceeds the {size_text(available)} available; {LOWER}, or pass --allow-large"
        )
    for device, (free, sites) in sorted((devices or {}).items()):
        need = device_need(cfg, ctx_len, pool=estimate["pool_per_sample"], **sites)
        line = (f"{device}: recorders and one batch {size_text(need)} for {sites['n_features']} features, "
                f"{size_text(free)} free after the model")
        if not quiet:
            print(f"neuroscope: {line}", file=sys.stderr)
        if need > free and not large:
            raise ConfigError(f"{line}: {LOWER}, spread the model with --device-map, or pass --allow-large")
    return estimate


def estimate_text(est: dict[str, int]) -> str:
    """'4.9 GB at its peak (the stream: model 0.5 GB, recorders 2.2 GB, one batch 1.5 GB;
    finalize: 4.6 GB with the example windows, 1.9 GB)'."""
    when = "stream" if est["stream"] >= est["finalize"] else "finalize"
    return (f"{size_text(est['total'])} at its peak in the {when} (model {size_text(est['model'])}, recorders "
            f"{size_text(est['recorders'])}, one batch {size_text(est['batch'])}; finalize {size_text(est['finalize'])} "
            f"with the example windows, {size_text(est['windows'])})")


def size_text(n: int | None) -> str:
    """Bytes as a short human-readable size (e.g. "4.3 GB")."""
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
