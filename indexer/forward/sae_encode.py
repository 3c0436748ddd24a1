"""SAE and transcoder encoders: a hooked activation [batch, pos, d_in] -> dense latents
[batch, pos, d_sae] float32, on the activation's device, in float32 even under bf16 autocast.

The formulas (SAELens ``process_sae_in`` + ``encode`` per architecture; sparsify
``SparseCoder.encode``), x [.., d_in]:

- input: x * input_scale (expected_average_only_in); constant_norm_rescale
  x * sqrt(d_in) / ‖x‖; layer_norm (x - mean) / (std + 1e-5) (std with Bessel's correction,
  as torch's default); then x' = x - b_dec when apply_b_dec_to_input (never for transcoders).
- standard / transcoder / skip_transcoder: ReLU(x' W_enc + b_enc)
- jumprelu (and its transcoders): h = x' W_enc + b_enc; h · 1[h > ReLU(threshold)]
  (= ReLU(h) · 1[h > θ]: SAELens ≥ 6.4 clamps θ at 0, so a negative θ disables the gate)
- topk: h = x' W_enc + b_enc (times ‖W_dec row‖ if rescale_acts_by_decoder_norm); the k
  largest h keep ReLU(h), the rest 0
- gated: 1[x' W_enc + b_gate > 0] · ReLU(x' (W_enc · exp(r_mag)) + b_mag)
- sparsify: a = ReLU(x' W_enc + b_enc); topk keeps the k largest a; groupmax keeps the
  largest a of each of k contiguous groups
A skip connection (W_skip) only changes the transcoder's output, never its latents.
"""

from __future__ import annotations

from typing import Any

import torch

from indexer.inputs.sae import Sae

LN_EPS = 1e-5


class SaeEncoder:
    """Encodes one SAE's latents; ``hook`` is the bridge hook it reads."""

    def __init__(self, sae: Sae, hook: str):
        self.sae = sae
        self.hook = hook
        self.cfg = sae.cfg
        t = sae.tensors
        self.W_enc = t["W_enc"]  # [d_in, d_sae]
        self.b_dec = t["b_dec"]
        if self.cfg.architecture == "gated":
            self.W_mag = self.W_enc * t["r_mag"].exp()  # [d_in, d_sae]
        if self.cfg.rescale_acts_by_decoder_norm:
            self.dec_norm = t["W_dec"].norm(dim=-1)  # [d_sae]
        self._encode = getattr(self, "_" + self._kind())

    def _kind(self) -> str:
        arch = self.cfg.architecture
        if arch.startswith("sparsify_"):
            return arch
        if "jumprelu" in arch:
            return "jumprelu"
        if arch in ("gated", "topk"):
            return arch
        return "relu"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, pos, d_in] (or [batch, pos, n_heads, d_head]) -> [batch, pos, d_sae] float32."""
        device_type = x.device.type if x.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type, enabled=False):
            return self._encode(self.prepare(x)).contiguous()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.ndim == 4:  # hook_z: [batch, pos, n_heads, d_head] -> [batch, pos, n_heads * d_head]
            x = x.flatten(-2)
        if self.sae.input_scale is not None:
            x = x * self.sae.input_scale
        norm = self.cfg.normalize_activations
        if norm == "constant_norm_rescale":
            x = x * (self.cfg.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
        elif norm == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + LN_EPS)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_enc + self.sae.tensors["b_enc"]

    def _relu(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self._pre(x))

    def _jumprelu(self, x: torch.Tensor) -> torch.Tensor:
        h = self._pre(x)
        return h * (h > torch.relu(self.sae.tensors["threshold"]))

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        t = self.sae.tensors
        gate = (x @ self.W_enc + t["b_gate"]) > 0
        return gate * torch.relu(x @ self.W_mag + t["b_mag"])

    def _topk(self, x: torch.Tensor) -> torch.Tensor:
        h = self._pre(x)
        if self.cfg.rescale_acts_by_decoder_norm:
            h = h * self.dec_norm
        return _keep_top(h, torch.relu, self.cfg.k)

    def _sparsify_topk(self, x: torch.Tensor) -> torch.Tensor:
        return _keep_top(torch.relu(self._pre(x)), None, self.cfg.k)

    def _sparsify_groupmax(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self._pre(x))
        groups = a.unflatten(-1, (self.cfg.k, -1))  # [.., k, d_sae / k]
        values, index = groups.max(dim=-1, keepdim=True)
        return torch.zeros_like(groups).scatter_(-1, index, values).flatten(-2)


def _keep_top(h: torch.Tensor, act: Any, k: int) -> torch.Tensor:
    values, index = torch.topk(h, min(k, h.shape[-1]), dim=-1, sorted=False)
    return torch.zeros_like(h).scatter_(-1, index, act(values) if act is not None else values)
