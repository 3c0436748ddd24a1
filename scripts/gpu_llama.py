"""Every neuron and head metric of a Llama-3.1-8B-shaped model (random weights) on one GPU.

Writes the model (a ``LlamaForCausalLM`` with Llama-3.1-8B's block shapes and the embedded
8k tokenizer, so its embedding is smaller than the real 128k one; weights saved in bf16),
prints the ``--dry-run`` plan, then runs ``neuroscope index`` over ``--tokens`` tokens
in bf16 and prints wall time, tokens/s and the GPU's peak memory as one JSON line.

    python scripts/gpu_llama.py --tokens 1000000 --work /tmp/llama
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def write_model(folder: Path, layers: int, device: str, small: bool = False) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from indexer.inputs.data import tokenizer_dir

    config = LlamaConfig(hidden_size=64 if small else 4096, intermediate_size=256 if small else 14336, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
                         vocab_size=8192, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tokenizer_dir())).save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--work", default="/tmp/llama")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a tiny model of the same architecture (to try the script)")
    args = ap.parse_args()
    from indexer.cli import main as cli

    work = Path(args.work)
    folder, out = work / "model", work / "index"
    if not (folder / "config.json").is_file():
        started = time.perf_counter()
        write_model(folder, args.layers, args.device, args.small)
        print(f"model written in {time.perf_counter() - started:.1f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    argv = ["index", "--model", str(folder), "--corpus", "code", "--corpus", "prose", "--out", str(out),
            "--tokens", str(args.tokens), "--dtype", "bfloat16", "--device", args.device, "--batch-size", str(args.batch_size)]
    cli([*argv, "--dry-run"])
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    code = cli(argv)
    wall = time.perf_counter() - started
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    tokens = manifest.get("counts", {}).get("tokens", args.tokens)
    print(json.dumps({"exit": code, "wall_s": round(wall, 1), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
                      "peak_gpu_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if gpu else None,
                      "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2) if gpu else None,
                      "timing": manifest.get("timing")}), flush=True)


if __name__ == "__main__":
    main()
