"""One forward pass over a batch of contexts, returning the features of every planned site.

The pass stops after the last hook it needs (no later layers, no unembedding) and runs under
bf16 autocast when asked. Contexts are right-padded with BOS to the full context length:
causal attention keeps padding from touching real positions, recorders ignore positions
``>= length``, and the fixed shape makes a context's activations bit-identical whatever else
is in its batch (narrow batches take other float kernels), so a sharded or resumed run and
finalize's re-run see exactly the values of a single run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from indexer.inputs.contexts import Context
from indexer.inputs.models import LoadedModel
from indexer.forward.hooks import Stop, narrowing_hook, site_hooks
from indexer.forward.sites import Site


@dataclass
class Batch:
    """A padded batch: tokens [batch, pos], lengths and ctx_ids [batch], on the model's device;
    ``read_at`` [batch]: where only one position per row is wanted, that position."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    ctx_ids: torch.Tensor
    contexts: list[Context]
    read_at: torch.Tensor | None = None

    @property
    def n_text_tokens(self) -> int:
        return sum(c.n_text_tokens for c in self.contexts)


def make_batch(contexts: list[Context], pad_id: int, device: str, width: int) -> Batch:
    """Contexts right-padded with ``pad_id`` to ``width`` (the run's context length)."""
    tokens = np.full((len(contexts), width), pad_id, dtype=np.int64)
    for row, ctx in enumerate(contexts):
        tokens[row, : len(ctx.token_ids)] = ctx.token_ids
    return Batch(
        tokens=_on_device(tokens, device),
        lengths=_on_device(np.array([len(c.token_ids) for c in contexts], np.int64), device),
        ctx_ids=_on_device(np.array([c.ctx_id for c in contexts], np.int64), device),
        contexts=contexts,
    )


def _on_device(a: np.ndarray, device: str) -> torch.Tensor:
    """A host array on ``device``; to a GPU from pinned memory, without waiting: a copy from
    pageable memory would wait for the GPU to finish the last batch, where the host can
    queue this one's kernels meanwhile (the batch loop has no other sync)."""
    t = torch.from_numpy(a)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class SiteForward:
    """Runs the model up to the last planned site and collects each site's features."""

    def __init__(self, model: LoadedModel, plan: list[Site], dtype: str = "float32"):
        self.model = model
        self.plan = plan
        self.device = str(next(model.bridge.parameters()).device)
        self.autocast = dtype == "bfloat16"
        self._out: dict[Site, torch.Tensor] = {}
        self._each: Callable[[Site, torch.Tensor, torch.Tensor | None], None] | None = None
        self._read_at: torch.Tensor | None = None
        self._hooks = site_hooks(model.bridge, plan, self._sink, self._pick)
        # with read_at: the last layer's MLP run at the read positions only, once the first
        # such batch showed it gives the full pass's features (else never)
        self._narrow = narrowing_hook(model.bridge, plan, self._pick)
        self._narrow_checked = False

    def _pick(self, tensor: torch.Tensor) -> torch.Tensor:
        """[batch, pos, ...] -> [batch, 1, ...] at the batch's ``read_at``, if it has one and
        the tensor is not narrowed yet."""
        if self._read_at is None or tensor.shape[1] == 1:
            return tensor
        return tensor[torch.arange(len(tensor), device=tensor.device), self._read_at].unsqueeze(1)

    def _sink(self, site: Site, features: torch.Tensor, pattern: torch.Tensor | None) -> None:
        self._out[site] = features if self._each is None else None  # handed on, not held: one site's at a time
        if self._each is not None:
            device_type = "cuda" if self.device.startswith("cuda") else "cpu"
            with torch.autocast(device_type, enabled=False) if self.autocast else nullcontext():
                self._each(site, features, pattern)  # recorders must not run under bf16 autocast

    def __call__(self, batch: Batch, each: Callable[[Site, torch.Tensor, torch.Tensor | None], None] | None = None
                 ) -> dict[Site, torch.Tensor]:
        """Features per site, each [batch, pos, feat] float32 on the model's device ([batch, 1,
        feat] at ``batch.read_at`` if set: only there are they computed, e.g. an SAE's). With
        ``each``, also ``each(site, features, pattern)`` from inside the pass as soon as a
        site's features exist (pattern: a heads site's attention pattern [batch, head, q, k],
        alive only then; None for other sites), and the features are not kept (the dict then
        maps each site to None): on a GPT-2-small shape all sites' features of one batch are
        1.2 GB."""
        narrow = self._narrow is not None and batch.read_at is not None and each is None
        if narrow and not self._narrow_checked:
            self._narrow_checked = True
            full = self._run(batch, None, [])
            try:
                narrowed = self._run(batch, None, [self._narrow])
            except Exception:  # an MLP that is not position-wise in its input: the full pass, always
                narrowed = None
            if narrowed is None or not _same_features(full, narrowed, self.autocast):
                self._narrow = None
            return full
        return self._run(batch, each, [self._narrow] if narrow else [])

    def _run(self, batch: Batch, each: Callable | None, extra: list[tuple[str, Callable]]) -> dict[Site, torch.Tensor]:
        self._out.clear()
        self._each = each
        self._read_at = batch.read_at
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        amp = torch.autocast(device_type, dtype=torch.bfloat16) if self.autocast else nullcontext()
        try:
            with torch.inference_mode(), amp, self.model.bridge.hooks(fwd_hooks=extra + self._hooks):
                try:
                    self.model.bridge(batch.tokens)
                except Stop:
                    pass
        finally:
            self._each = self._read_at = None
        missing = [site.key for site in self.plan if site not in self._out]
        if missing:
            raise RuntimeError(f"hooks did not fire for {missing}")
        return dict(self._out)


def _same_features(a: dict[Site, torch.Tensor], b: dict[Site, torch.Tensor], bf16: bool) -> bool:
    """Every site's features of two passes equal, up to float rounding."""
    rtol = 2e-2 if bf16 else 1e-4
    return all(
        a[s].shape == b[s].shape
        and torch.allclose(a[s], b[s], rtol=rtol, atol=rtol * float(a[s].abs().max().clamp(min=1e-6)), equal_nan=True)
        for s in a
    )


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from indexer.errors import ConfigError

        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return device


def bare_forward(model: LoadedModel, plan: list[Site], batch: Batch, dtype: str = "float32") -> None:
    """The forward pass alone, stopped where ``SiteForward`` stops: the bench's physical limit."""

    def stop(tensor: Any, hook: Any) -> None:
        raise Stop

    device_type = "cuda" if str(batch.tokens.device).startswith("cuda") else "cpu"
    amp = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    last_hook = plan[-1].hook_names()[-1]
    with torch.inference_mode(), amp, model.bridge.hooks(fwd_hooks=[(last_hook, stop)]):
        try:
            model.bridge(batch.tokens)
        except Stop:
            pass
