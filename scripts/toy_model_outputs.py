"""What a trained toy model leaves in data/models/<name>/: weights, config, tokenizer,
training log, loss curve and model card. Used by scripts/train_toy_model.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toy_model_data import HOLDOUT_MOD, TOKENIZER_DIR, TOKENIZER_FILES, log


def save_outputs(out_dir: Path, bridge, config: dict, log_data: dict, args) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in bridge.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "name": args.name})
    (tmp / "bridge_config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in TOKENIZER_FILES:
        shutil.copy2(TOKENIZER_DIR / f, tmp / f)
    (tmp / "training_log.json").write_text(json.dumps(log_data, indent=2) + "\n")
    plot_loss(tmp / "loss.png", log_data)
    if any("induction_max" in r for r in log_data["heldout_loss"]):
        plot_induction(tmp / "induction.png", log_data)
    (tmp / "README.md").write_text(model_card(config, log_data))

    # Self-check: the saved weights load strictly into a fresh bridge built from the saved
    # config and give the trained model's logits.
    from safetensors.torch import load_file

    from indexer.inputs.models import build_native_bridge

    fresh = build_native_bridge(json.loads((tmp / "bridge_config.json").read_text()))
    fresh.load_state_dict(load_file(str(tmp / "model.safetensors")), strict=True)
    fresh.eval()
    bridge.eval()
    sample = torch.randint(1, config["d_vocab"], (2, 64), generator=torch.Generator().manual_seed(0))
    sample[:, 0] = 0
    with torch.no_grad():
        diff = (fresh(sample) - bridge(sample)).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"saved model differs from the trained one (max |dlogit| = {diff})")
    log(f"self-check: reloaded weights (strict) give the same logits (max |diff| = {diff:.2e})")

    for f in tmp.iterdir():
        f.chmod(0o644)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def plot_loss(path: Path, log_data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    tr = log_data["train_loss"]
    ax.plot([r["tokens"] for r in tr], [r["train_loss"] for r in tr], lw=1, label="train (mix)")
    ho = log_data["heldout_loss"]
    ax.plot([r["tokens"] for r in ho], [r["heldout_loss"] for r in ho], "o-", ms=3,
            label="held-out (mix)")
    for key, style in (("code", ":"), ("prose", "--")):
        pts = [(r["tokens"], r[key]) for r in ho if key in r]
        if pts:
            ax.plot(*zip(*pts), style, lw=1, label=f"held-out {key}")
    h = log_data["unigram_entropy"]["mix_nats"]
    ax.axhline(h, color="gray", lw=1, ls="-.", label=f"unigram entropy of the mix ({h:.2f})")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(0, max(10.0, h + 1))
    ax.set_title(f"{log_data['name']}: {log_data['config']['n_layers']}L "
                 f"{'attention-only' if log_data['config']['attn_only'] else log_data['config']['act_fn']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_induction(path: Path, log_data: dict) -> None:
    """Held-out loss and the best head's induction / previous-token score against training
    tokens, on one figure (two axes), so the induction-head phase change is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ho = [r for r in log_data["heldout_loss"] if "induction_max" in r]
    x = [r["tokens"] for r in ho]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(x, [r["heldout_loss"] for r in ho], "o-", ms=3, color="tab:blue", label="held-out loss (mix)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats/token)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(x, [r["induction_max"] for r in ho], "s-", ms=3, color="tab:red", label="best induction score")
    ax2.plot(x, [r["prev_token_max"] for r in ho], "^--", ms=3, color="tab:green", label="best previous-token score")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("head score on held-out [BOS] r r", color="tab:red")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax2.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    ax.set_title(f"{log_data['name']}: loss and head scores during training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def head_card(ld: dict) -> str:
    """The card's head-score section (attention-probe scores of the final model)."""
    heads = ld.get("final_head_scores")
    if not heads:
        return ""
    rows = ["| layer | head | prev_token | induction | duplicate_token | bos |", "|---|---|---|---|---|---|"]
    for layer, values in enumerate(heads["induction"]):
        for h in range(len(values)):
            rows.append(f"| {layer} | {h} | {heads['prev_token'][layer][h]:.3f} | {values[h]:.3f} | "
                        f"{heads['duplicate_token'][layer][h]:.3f} | {heads['bos'][layer][h]:.3f} |")
    phases, cur = [], ld
    while cur is not None:
        a = cur["args"]
        phases.append(f"{cur.get('tokens_seen', '?') if cur is ld else cur['tokens_seen']:,} tokens at lr {a['lr']}, "
                      f"{round(100 * a.get('repeat_frac', 0))}% repeats")
        cur = cur.get("continued_from")
    history = ("Trained in phases (last first, cumulative tokens): " + "; ".join(phases) + ".\n\n"
               if len(phases) > 1 else "")
    return (f"\n## Heads\n\n{history}{round(100 * ld.get('repeat_frac', 0))}% of the training contexts were synthetic "
            "repeats (half `[BOS] r r` with `r` random tokens, half a training span repeated), which "
            "are meant to make induction heads form. Head scores of the final model "
            "on held-out `[BOS] r r` (`indexer.forward.head_scores`, mean attention to the relevant "
            "key; the curve during training is `induction.png`):\n\n" + "\n".join(rows) + "\n")


def _activation(config: dict) -> str:
    if config.get("attn_only"):
        return "none: attention-only (no MLP)"
    return f"`{config['act_fn']}`" + (" (x * softmax(x), then a LayerNorm inside the MLP)" if config["act_fn"] == "solu_ln" else "")


def _positions(config: dict) -> str:
    if config.get("positional_embedding_type") == "rotary":
        return f"rotary positional embeddings (on {config.get('rotary_dim', config['d_head'])} dims of each head)"
    return "learned positional embeddings"


def model_card(config: dict, ld: dict) -> str:
    f = ld["final_heldout_loss"]
    h = ld["unigram_entropy"]
    n_params = ld["n_params"]
    return f"""# {ld['name']}

A toy transformer language model embedded in neuroscope for demos, tests and examples.
Trained from scratch on the embedded corpora with `scripts/train_toy_model.py`.

| | |
|---|---|
| layers | {config['n_layers']} |
| d_model / heads x d_head / d_mlp | {config['d_model']} / {config['n_heads']} x {config['d_head']} / {'none' if config.get('attn_only') else config['d_mlp']} |
| activation | {_activation(config)} |
| normalization | LayerNorm (pre-LN), {_positions(config)}, untied unembedding |
| context | {config['n_ctx']} tokens, BOS (`<|endoftext|>`, id 0) at position 0 |
| vocabulary | {config['d_vocab']} (byte-level BPE, `data/tokenizer`) |
| parameters | {n_params:,} |
| training tokens | {ld['tokens_seen']:,} ({ld['steps']} steps x {ld['batch_size']} contexts) |
| seed | {ld['seed']} |
| data | ~{round(100 * ld['code_frac'])}% of contexts from `code` (CPython stdlib), ~{round(100 * (1 - ld['code_frac']))}% from `prose` (Python docs + Shakespeare) |
| held-out loss (nats/token) | code {f['code']:.3f}, prose {f['prose']:.3f}, mix {f['mix']:.3f} |
| unigram entropy (nats/token) | code {h['code_nats']:.3f}, prose {h['prose_nats']:.3f}, mix {h['mix_nats']:.3f} |

Every training context is `[BOS] + up to {config['n_ctx'] - 1} tokens of one document` (the form
the indexer feeds); nothing is packed across documents. 2% of the documents of each corpus
(sha256 of `"<corpus>:<row index>"` mod {HOLDOUT_MOD} == 0) were held out and never trained on.

Load it with `indexer.models.load_model("{ld['name']}")` (a `TransformerBridge` built with
`TransformerBridge.boot_native` from `bridge_config.json`, weights from `model.safetensors`).
The training curve is in `loss.png`, the full record in `training_log.json`.

This is a toy: a few million tokens on one CPU; its neurons are for exercising the indexer,
not for research conclusions.
""" + head_card(ld)
