"""The page-fault tax of a CPU forward pass: tokens/s, minor page faults and kernel time of a
transformers model's own body over a few batches (JSON). Compare allocator settings:

    .venv/bin/python scripts/page_faults.py DIR [--attn eager|sdpa] [--batches 3]
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 .venv/bin/python scripts/page_faults.py DIR
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python scripts/page_faults.py DIR

DIR: a Hugging Face causal-LM folder (e.g. the one ``neuroscope bench --model gpt2-small-random``
builds). Batches of 8 x 1,024 random token ids; one untimed batch first. Run it alone: it
times. See run/allocator.py (NEUROSCOPE_MALLOC=reuse) for what neuroscope does with it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--attn", default="eager", choices=("eager", "sdpa"))
    p.add_argument("--batches", type=int, default=3)
    args = p.parse_args()
    body = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation=args.attn).base_model.eval()
    tokens = torch.randint(0, body.config.vocab_size, (8, 1024), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        body(input_ids=tokens)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.batches):
            body(input_ids=tokens)
        seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "attn": args.attn, "tokens_per_s": round(args.batches * tokens.numel() / seconds, 1),
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "kernel_s": round(after.ru_stime - before.ru_stime, 1), "user_s": round(after.ru_utime - before.ru_utime, 1),
        "peak_rss_mb": after.ru_maxrss // 1024,
    }))


if __name__ == "__main__":
    main()
