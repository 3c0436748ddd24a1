"""Plumbing shared by the recorders: backend choice, batch checks, state packing.

A batch handed to a recorder (shapes named once here):
    acts     float32 [batch, pos, feat]   contiguous activations
    lengths  int64   [batch]              valid length of each context, BOS included
    ctx_ids  int64   [batch]              global context ids
Position 0 (BOS) and positions >= lengths[b] are never recorded.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numba
import numpy as np
import torch

from indexer.errors import NeuroscopeError

BACKENDS = ("torch", "numba")
NJIT_OPTIONS = {"cache": True, "fastmath": False}


class RecorderError(NeuroscopeError):
    """A recorder got a batch, state or merge partner of the wrong shape or kind."""


def default_backend(device: str | torch.device = "cpu") -> str:
    """'numba' for CPU, 'torch' for any accelerator; NEUROSCOPE_RECORDER_BACKEND overrides."""
    forced = os.environ.get("NEUROSCOPE_RECORDER_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise RecorderError(f"NEUROSCOPE_RECORDER_BACKEND={forced!r} but expected one of {BACKENDS}")
        return forced
    return "numba" if torch.device(device).type == "cpu" else "torch"


def feature_chunk(n_features: int) -> int:
    """Features owned by one numba thread: one wide contiguous range per thread.

    Narrow chunks are several times slower: each row of a chunk then sits on its own
    4 KiB page, which defeats the hardware prefetcher.
    """
    per_thread = -(-n_features // max(1, numba.get_num_threads()))
    return max(16, -(-per_thread // 16) * 16)


ACCELERATOR_STEP_SCALE = 8  # torch backend: an accelerator's steps hold this many times a CPU's elements


def step_elements(elements: int, device: torch.device) -> int:
    """The elements (tokens x features) one step of a torch-backend update folds at once:
    ``elements`` on a CPU, ``ACCELERATOR_STEP_SCALE`` times as many on an accelerator. Each
    step also passes over the whole state (thresholds from the fine counts, the kept tokens
    re-filtered, the window pool), which on a GPU costs more than the step's tokens: a
    Llama-3.1-8B layer's 14,336 neurons took 28 steps a batch at the CPU's size."""
    return elements if torch.device(device).type == "cpu" else elements * ACCELERATOR_STEP_SCALE


MAX_CONTEXTS = 2**31  # ctx ids are kept as int32
SHORT_CONTEXT = 1 << 15  # contexts of at most this many tokens keep their positions as int16


def position_dtype(max_len: int) -> type:
    """The dtype the recorders keep token positions in: int16 where every position of a
    context of ``max_len`` tokens fits (2 bytes of each kept token, sample window and top-k
    entry), else int32."""
    return np.int16 if max_len <= SHORT_CONTEXT else np.int32


def state_max_len(state: dict[str, Any]) -> int:
    """The max_len of a recorder state (states written before it existed kept int32 positions)."""
    return int(state["max_len"]) if "max_len" in state else 1 << 31


def check_batch(acts: torch.Tensor, lengths: torch.Tensor, ctx_ids: torch.Tensor,
                n_features: int, max_len: int | None = None) -> None:
    """Raise RecorderError unless the batch has the documented shapes (and, with
    ``max_len``, contexts of at most that many tokens)."""
    if acts.ndim != 3 or acts.shape[2] != n_features:
        raise RecorderError(f"acts shape={tuple(acts.shape)} but expected [batch, pos, {n_features}]")
    if max_len is not None and acts.shape[1] > max_len:
        raise RecorderError(f"contexts of {acts.shape[1]} tokens but these recorders were made for at most "
                            f"{max_len} (max_len)")
    batch = acts.shape[0]
    for name, t in (("lengths", lengths), ("ctx_ids", ctx_ids)):
        if t.shape != (batch,):
            raise RecorderError(f"{name} shape={tuple(t.shape)} but expected ({batch},)")
    if lengths.device.type == "cpu" and batch:  # a check on an accelerator would sync it
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > acts.shape[1]:
            raise RecorderError(f"lengths in [{lo}, {hi}] but expected within [0, {acts.shape[1]}]")
    if ctx_ids.device.type == "cpu" and batch and int(ctx_ids.max()) >= MAX_CONTEXTS:
        raise RecorderError(f"ctx_id {int(ctx_ids.max())} but one index holds at most {MAX_CONTEXTS} contexts")


def host_tokens(lengths: torch.Tensor) -> int | None:
    """A batch's recorded tokens (lengths - 1 each, BOS not), counted where the lengths live on
    the host; None on an accelerator, where counting would sync it."""
    return int(torch.clamp(lengths - 1, min=0).sum()) if lengths.device.type == "cpu" else None


def numpy_batch(acts: torch.Tensor, lengths: torch.Tensor, ctx_ids: torch.Tensor):
    """The batch as numpy views for the numba kernels (copies only if needed)."""
    acts = acts.detach()
    if acts.device.type != "cpu" or acts.dtype != torch.float32 or not acts.is_contiguous():
        acts = acts.to("cpu", torch.float32).contiguous()
    lengths = lengths.detach().to("cpu", torch.int64).numpy()
    ctx_ids = ctx_ids.detach().to("cpu", torch.int64).numpy()
    return acts.numpy(), np.ascontiguousarray(lengths), np.ascontiguousarray(ctx_ids)


def torch_batch(acts: torch.Tensor, lengths: torch.Tensor, ctx_ids: torch.Tensor,
                device: torch.device):
    """The batch as float32 / int64 tensors on the recorder's device."""
    acts = acts.detach().to(device, torch.float32)
    return acts, lengths.detach().to(device, torch.int64), ctx_ids.detach().to(device, torch.int64)


def valid_tokens(lengths: torch.Tensor, n_pos: int) -> torch.Tensor:
    """[batch, pos] bool: the recorded positions 1 .. lengths[b]-1."""
    pos = torch.arange(n_pos, device=lengths.device)
    return (pos >= 1) & (pos < lengths[:, None])


class Recorder:
    """Base class: arrays live as numpy (numba backend) or torch tensors (torch backend).

    Subclasses list their state arrays in `arrays`, their constructor arguments in
    `config()`, and implement `_update_numba`, `_update_torch`, `_merge_numba`, `_merge_torch`.
    """

    kind: ClassVar[str] = ""
    arrays: ClassVar[tuple[str, ...]] = ()
    merge_free: ClassVar[tuple[str, ...]] = ()  # config keys that may differ between merged states

    def __init__(self, backend: str | None, device: str | torch.device):
        self.device = torch.device(device)
        self.backend = backend or default_backend(self.device)
        if self.backend not in BACKENDS:
            raise RecorderError(f"backend={self.backend!r} but expected one of {BACKENDS}")
        if self.backend == "numba" and self.device.type != "cpu":
            raise RecorderError(f"backend='numba' keeps its state on the CPU, not {self.device}")

    def _array(self, a: np.ndarray):
        """A fresh backend array holding a copy of `a`."""
        a = np.array(a, copy=True, order="C")
        return a if self.backend == "numba" else torch.from_numpy(a).to(self.device)

    def _numpy(self, name: str) -> np.ndarray:
        a = getattr(self, name)
        return a.copy() if isinstance(a, np.ndarray) else a.detach().cpu().numpy()

    def _view(self, name: str) -> np.ndarray:
        a = getattr(self, name)
        return a if isinstance(a, np.ndarray) else a.detach().cpu().numpy()

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, acts: torch.Tensor, lengths: torch.Tensor, ctx_ids: torch.Tensor) -> None:
        """Record one batch: acts [batch, pos, feat], lengths [batch], ctx_ids [batch]."""
        config = self.config()
        check_batch(acts, lengths, ctx_ids, config["n_features"], config.get("max_len"))
        if self.backend == "numba":
            self._update_numba(*numpy_batch(acts, lengths, ctx_ids))
        else:
            with torch.no_grad():
                self._update_torch(*torch_batch(acts, lengths, ctx_ids, self.device))

    def merge(self, other: "Recorder") -> None:
        """Fold another recorder of the same kind and config into this one."""
        self._check_mergeable(other)
        arrays = {name: other._numpy(name) for name in self.arrays}
        if self.backend == "numba":
            self._merge_numba(arrays)
        else:
            with torch.no_grad():
                self._merge_torch({k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()})

    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """Config (as 0-d / n-d arrays) and state arrays, all plain numpy; with ``copy=False``
        the arrays may be the recorder's own (a checkpoint written before the next update)."""
        out = {"kind": np.array(self.kind)}
        out.update({k: np.asarray(v) for k, v in self.config().items()})
        out.update({name: self._numpy(name) if copy else self._view(name) for name in self.arrays})
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], backend: str | None = None,
                   device: str | torch.device = "cpu"):
        """Rebuild a recorder from `state()`, on any backend and device."""
        kind = str(np.asarray(state.get("kind", "")))
        if kind != cls.kind:
            raise RecorderError(f"state kind={kind!r} but expected {cls.kind!r}")
        obj = cls(**cls._config_from_state(state), backend=backend, device=device)
        for name in cls.arrays:
            want = tuple(getattr(obj, name).shape)
            got = np.asarray(state[name])
            if got.shape != want:
                raise RecorderError(f"state[{name!r}] shape={got.shape} but expected {want}")
            setattr(obj, name, obj._array(got.astype(obj._numpy(name).dtype, copy=False)))
        return obj

    @classmethod
    def _config_from_state(cls, state: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def _check_mergeable(self, other: "Recorder") -> None:
        if type(other) is not type(self):
            raise RecorderError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        mine, theirs = self.config(), other.config()
        for key, value in mine.items():
            if key in self.merge_free:
                continue
            if not np.array_equal(np.asarray(value), np.asarray(theirs[key])):
                raise RecorderError(f"cannot merge: {key} differs ({theirs[key]!r} vs {value!r})")
