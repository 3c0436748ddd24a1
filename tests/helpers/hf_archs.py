"""Tiny random Hugging Face models of many architectures, and references read from the
model's own modules with plain ``transformers`` forward hooks (no TransformerLens).

Every model: 2 layers, d_model 64, 4 heads, the embedded tokenizer (vocabulary 8192, BOS 0),
random weights from ``from_config`` written by ``save_pretrained``. ``ARCHS`` names, per
family, the module whose input is the neuron activation (the MLP's output projection) and,
for gated MLPs, the gate and up projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from helpers.paths import TOKENIZER_DIR

D_MODEL, N_LAYERS, N_HEADS, D_MLP, N_CTX = 64, 2, 4, 32, 64
N_EXPERTS = 4  # mixture-of-experts models: experts per layer, each of D_MLP neurons
_LLAMA = dict(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
              num_key_value_heads=2, max_position_embeddings=N_CTX)
_GATED = {"gate": "model.layers.{L}.mlp.gate_proj", "up": "model.layers.{L}.mlp.up_proj"}


@dataclass(frozen=True)
class Arch:
    """One architecture of the matrix.

    Attributes:
        config: the ``transformers`` config class name; kwargs: its arguments.
        down: the module (with ``{L}``) whose input is the neuron activation (``mlp_post``).
        gated: for gated MLPs, the gate and up projections (``mlp_gate``, ``mlp_up``).
        experts: for mixture-of-experts MLPs, the experts module (its inputs are the routed
            hidden states, the chosen experts and their weights); shared: a shared expert's
            down projection (Qwen2-MoE).
        final_norm: the final norm (its input is the residual stream the unembedding reads).
    """

    config: str
    kwargs: dict
    down: str = ""
    gated: dict = field(default_factory=dict)
    experts: str = ""
    final_norm: str = "model.norm"
    shared: str = ""  # a shared expert's down projection (its input: the shared expert's neurons)


ARCHS = {
    "gpt2": Arch("GPT2Config", dict(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX, n_inner=D_MLP),
                 "transformer.h.{L}.mlp.c_proj", final_norm="transformer.ln_f"),
    "gpt_neox": Arch("GPTNeoXConfig", dict(hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                                           intermediate_size=D_MLP, max_position_embeddings=N_CTX, rotary_pct=0.25),
                     "gpt_neox.layers.{L}.mlp.dense_4h_to_h", final_norm="gpt_neox.final_layer_norm"),
    "llama": Arch("LlamaConfig", _LLAMA, "model.layers.{L}.mlp.down_proj", _GATED),
    "mistral": Arch("MistralConfig", dict(_LLAMA, sliding_window=16), "model.layers.{L}.mlp.down_proj", _GATED),
    "qwen2": Arch("Qwen2Config", dict(_LLAMA, tie_word_embeddings=True), "model.layers.{L}.mlp.down_proj", _GATED),
    "gemma2": Arch("Gemma2Config", dict(_LLAMA, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                        final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
                   "model.layers.{L}.mlp.down_proj", _GATED),
    "phi": Arch("PhiConfig", dict(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                                  num_attention_heads=N_HEADS, max_position_embeddings=N_CTX, partial_rotary_factor=0.5),
                "model.layers.{L}.mlp.fc2", final_norm="model.final_layernorm"),
    "olmo2": Arch("Olmo2Config", _LLAMA, "model.layers.{L}.mlp.down_proj", _GATED),
    "bloom": Arch("BloomConfig", dict(hidden_size=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS),
                  "transformer.h.{L}.mlp.dense_4h_to_h", final_norm="transformer.ln_f"),
    "gptj": Arch("GPTJConfig", dict(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX, rotary_dim=8,
                                    n_inner=D_MLP), "transformer.h.{L}.mlp.fc_out", final_norm="transformer.ln_f"),
    "opt": Arch("OPTConfig", dict(hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, ffn_dim=D_MLP, num_attention_heads=N_HEADS,
                                  max_position_embeddings=N_CTX, word_embed_proj_dim=D_MODEL),
                "model.decoder.layers.{L}.fc2", final_norm="model.decoder.final_layer_norm"),
    "mixtral": Arch("MixtralConfig", dict(_LLAMA, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
                    experts="model.layers.{L}.mlp.experts"),
    "qwen2_moe": Arch("Qwen2MoeConfig", dict(_LLAMA, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                             shared_expert_intermediate_size=48, decoder_sparse_step=1),
                      experts="model.layers.{L}.mlp.experts", shared="model.layers.{L}.mlp.shared_expert.down_proj"),
}


def build(name: str, folder: Path, seed: int = 0) -> Path:
    """A random model of architecture ``name`` written with save_pretrained, with the embedded
    tokenizer. Weights are drawn with std 0.2 (not the usual 0.02) so activations are far from
    zero and relative errors mean something."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = ARCHS[name]
    config = getattr(transformers, arch.config)(vocab_size=8192, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                                initializer_range=0.2, **arch.kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms start at 1 (or 0 for Gemma's 1 + w): random scales test the folding
        for module_name, p in model.named_parameters():
            if "norm" in module_name or "ln" in module_name.split(".")[-2]:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(folder)
    return folder


def load_eager(folder: Path):
    """The saved model through plain transformers, eager attention (and eager experts: a loop
    over experts, which also runs in float64), fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager", experts_implementation="eager",
                                                dtype=torch.float32).eval()


def reference(model, name: str, token_ids: list[int]) -> dict[tuple[str, int], np.ndarray]:
    """Per (site, layer): the values of one context, read by hooks on the model's own modules.

    'mlp_post' [pos, d_mlp] (input of the output projection), 'mlp_gate' / 'mlp_up' [pos, d_mlp],
    'attn' [head, q, k] (eager attention weights), and for experts 'route' [pos, experts]
    (1 where the token was sent to the expert) with 'expert_in' [pos, d_model], and 'shared'
    [pos, d_shared] for a shared expert (the input of its down projection)."""
    arch = ARCHS[name]
    modules = dict(model.named_modules())
    out: dict[tuple[str, int], np.ndarray] = {}
    handles = []

    def keep(key, pick):
        def hook(module, args, result=None):
            value = pick(args, result).detach().float()  # [1, pos, d] ([pos, d] in OPT, which flattens the batch)
            out[key] = value.reshape(-1, value.shape[-1]).numpy()
        return hook

    for layer in range(N_LAYERS):
        if arch.down:
            handles.append(modules[arch.down.format(L=layer)].register_forward_pre_hook(
                keep(("mlp_post", layer), lambda a, r: a[0])))
        for site, path in arch.gated.items():
            handles.append(modules[path.format(L=layer)].register_forward_hook(
                keep((f"mlp_{site}", layer), lambda a, r: r)))
        if arch.experts:
            handles.append(modules[arch.experts.format(L=layer)].register_forward_hook(
                _expert_hook(out, layer)))
        if arch.shared:
            handles.append(modules[arch.shared.format(L=layer)].register_forward_pre_hook(
                keep(("shared", layer), lambda a, r: a[0])))
    try:
        with torch.no_grad():
            result = model(torch.tensor([token_ids]), output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    for layer, attn in enumerate(result.attentions):
        out[("attn", layer)] = attn[0].float().numpy()
    return out


def _expert_hook(out: dict, layer: int):
    def hook(module, args, result):
        hidden, index = args[0], args[1]  # [pos, d_model], [pos, top_k]
        route = torch.zeros(hidden.shape[0], module.num_experts)
        route.scatter_(1, index, 1.0)
        out[("route", layer)] = route.numpy()
        out[("expert_in", layer)] = hidden.detach().float().numpy()
    return hook


def expert_neurons(model, name: str, layer: int, hidden: np.ndarray) -> np.ndarray:
    """[pos, experts * d_expert]: every expert's neurons act(gate) * up on every token, from the
    experts module's own weights (gate_up_proj [experts, 2 * d_expert, d_model])."""
    experts = dict(model.named_modules())[ARCHS[name].experts.format(L=layer)]
    x = torch.from_numpy(hidden)
    with torch.no_grad():
        gate, up = torch.einsum("pm,efm->pef", x, experts.gate_up_proj).chunk(2, dim=-1)  # each [pos, experts, d_expert]
        acts = experts.act_fn(gate) * up
    return acts.reshape(x.shape[0], -1).numpy()


def head_reference(attn: np.ndarray) -> dict[str, np.ndarray]:
    """max_attn (largest weight on a non-BOS source) and entropy (nats) per [head, q] from
    eager attention weights [head, q, k]."""
    p = attn.astype(np.float64)
    max_attn = p[..., 1:].max(axis=-1) if p.shape[-1] > 1 else np.zeros(p.shape[:2])
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return {"max_attn": max_attn, "entropy": entropy}


def output_direction(model, name: str, layer: int, neuron: int) -> torch.Tensor:
    """[d_model]: what neuron ``neuron`` of ``layer`` writes to the residual stream per unit of
    activation, read from the output projection's own weight (Conv1D stores it transposed); of
    a mixture of experts, neuron ``expert * d_expert + n`` from that expert's down_proj."""
    if ARCHS[name].experts and neuron >= N_EXPERTS * D_MLP:  # the shared expert
        return dict(model.named_modules())[ARCHS[name].shared.format(L=layer)].weight.detach()[:, neuron - N_EXPERTS * D_MLP]
    if ARCHS[name].experts:
        down_proj = dict(model.named_modules())[ARCHS[name].experts.format(L=layer)].down_proj.detach()
        d_expert = down_proj.shape[2]  # [experts, d_model, d_expert]
        return down_proj[neuron // d_expert, :, neuron % d_expert]
    down = dict(model.named_modules())[ARCHS[name].down.format(L=layer)]
    weight = down.weight.detach()
    return weight[neuron] if type(down).__name__ == "Conv1D" else weight[:, neuron]
