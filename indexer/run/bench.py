"""`neuroscope bench`: indexing throughput as ratios measured side by side in one run.

Per configuration (``mlp``, ``mlp+heads``, and for toy-1l ``mlp+sae``: the neurons plus the
embedded SAE's 2048 latents, with ``job_vs_mlp_job`` = the neurons-only job's throughput over
this one's):

- ``job``: the whole ``index`` job from model loaded to manifest written (stream, then
  finalize), with ``phases_s`` (seconds per phase, from the fastest round);
- ``stream``: the streaming pass alone (tokenize, forward, record);
- each with ``vs_forward`` = the bare forward pass stopped at the same hook, on the same
  contexts, batch and dtype, over that time, and ``vs_naive`` = a naive indexer
  (``run_with_cache`` on the full model, then ``torch.topk`` over every token, merged per
  batch) over that time;
- peak RSS of a whole ``neuroscope index`` run at N and 4N tokens (it must not grow).

Each configuration is timed three times (``--rounds``) in alternation (forward, index, naive, forward, ...)
and the fastest time of each is kept, so a burst of load elsewhere hurts all equally.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from indexer.run import allocator

GELU_1L_SHAPE = dict(
    d_model=512, d_head=64, n_heads=8, n_layers=1, n_ctx=1024, d_vocab=50257, d_mlp=2048,
    act_fn="gelu", normalization_type="LN", seed=0,
)
RANDOM_GELU_1L = "gelu-1l-random"
RANDOM_GPT2_SMALL = "gpt2-small-random"  # a Hugging Face GPT2LMHeadModel shaped like GPT-2 small


DEMO_SAE = "toy-1l-mlp-out"  # data/saes/: an SAE on toy-1l's blocks.0.hook_mlp_out
# configuration name -> its index options (--sites, --sae)
CONFIGS: dict[str, dict[str, Any]] = {"mlp": {"sites": "mlp_post"}, "mlp+heads": {"sites": "all"},
                                      "mlp+sae": {"sites": "mlp_post", "sae": [DEMO_SAE]}}


def default_configs(model: str) -> tuple[str, ...]:
    """Every configuration; ``mlp+sae`` only for toy-1l, the model the embedded SAE reads."""
    return tuple(name for name in CONFIGS if name != "mlp+sae" or model == "toy-1l")


def bench(model: str = "toy-1l", tokens: int = 200_000, batch_size: int = 8, dtype: str = "float32",
          memory: bool = True, configs: tuple[str, ...] | None = None, rounds: int = 3, naive: bool = True
          ) -> dict[str, Any]:
    """All the figures for one model, as a JSON-able dict. Fewer ``configs``, fewer ``rounds``,
    no ``memory`` runs or no ``naive`` indexer make a large model's bench affordable (each round
    times every pass once)."""
    with tempfile.TemporaryDirectory(prefix="neuroscope-bench-") as tmp:
        spec = {RANDOM_GELU_1L: _random_gelu_1l, RANDOM_GPT2_SMALL: _random_gpt2_small}.get(
            model, lambda _: model)(Path(tmp))
        result: dict[str, Any] = {"model": model, "tokens": tokens, "batch_size": batch_size, "dtype": dtype,
                                  "rounds": rounds}
        for name in configs or default_configs(model):
            result[name] = _throughput(spec, CONFIGS[name], tokens, batch_size, dtype, rounds, naive)
        if "mlp" in result and "mlp+sae" in result:  # what adding the SAE's latents costs
            result["mlp+sae"]["job_vs_mlp_job"] = round(result["mlp"]["job"]["tokens_per_s"]
                                                        / result["mlp+sae"]["job"]["tokens_per_s"], 3)
        if memory:
            result["peak_rss_mb"] = {
                str(n): _peak_rss_mb(spec, n, batch_size, dtype, Path(tmp) / f"mem{n}") for n in (tokens, 4 * tokens)
            }
            small, large = result["peak_rss_mb"].values()
            result["peak_rss_growth"] = round(large / small - 1, 4)
    return result


def _throughput(spec: str, options: dict[str, Any], tokens: int, batch_size: int, dtype: str, rounds: int,
                naive: bool = True) -> dict[str, Any]:
    from indexer.config import IndexConfig
    from indexer.inputs.contexts import batches
    from indexer.forward.runner import bare_forward, make_batch
    from indexer.recorders import warm_up
    from indexer.run.engine import Run

    cfg = IndexConfig.parse(dict(model=spec, corpus=["code", "prose"], out="", tokens=tokens, batch_size=batch_size,
                                 dtype=dtype, checkpoint_every=10**9, **options))
    with tempfile.TemporaryDirectory() as out:
        run = Run.open(cfg, Path(out))
        run.size_memory(quiet=True)  # the window pool `neuroscope index` would choose
        bos = run.model.info.bos_token_id
        prepared = [make_batch(group, bos, run.device, run.ctx_len) for group in batches(iter(run.contexts), batch_size)]
        n_tokens = sum(b.n_text_tokens for b in prepared)
        run.start()
        warm_up()

        def forward() -> None:
            with allocator.reuse():  # as the stream runs its forward (run/allocator.py)
                for batch in prepared:
                    bare_forward(run.model, run.plan, batch, dtype)
                    allocator.release()

        def stream() -> None:
            run.reset()  # empty recorders, so each timed pass starts alike
            run.stream(progress=False)

        phases: list[dict[str, float]] = []

        def job() -> None:
            run.reset()
            run.out = Path(tempfile.mkdtemp(dir=out))
            started = time.perf_counter()
            run.stream(progress=False)
            streamed = time.perf_counter()
            run.finalize(progress=False)
            phases.append({"stream": round(streamed - started, 3), **run.finalize_phases,
                           "total": round(time.perf_counter() - started, 3)})

        passes = {"forward": forward, "stream": stream, "job": job}
        if naive:
            passes["naive"] = _naive_indexer(run, prepared)
        passes.update(_transformers_forwards(spec, run, prepared))
        times = _alternate(passes, rounds)
    best = min(phases, key=lambda p: p["total"])

    def figures(name: str) -> dict[str, Any]:
        out = {"tokens_per_s": round(n_tokens / times[name], 1),
               "vs_forward": round(times["forward"] / times[name], 3)}
        for other in ("naive", "hf_eager", "hf_sdpa"):  # naive: the baseline; hf_*: the model's own forward
            if other in times:
                out[f"vs_{other}"] = round(times[other] / times[name], 3)
        return out

    return {
        "job": {**figures("job"), "phases_s": best},
        "stream": figures("stream"),
        "tokens_per_s": {name: round(n_tokens / t, 1) for name, t in times.items()},
        "vs_forward": round(times["forward"] / times["stream"], 3),  # streaming-only, as before
        **({"vs_naive": round(times["naive"] / times["stream"], 3)} if "naive" in times else {}),
    }


def _transformers_forwards(spec: str, run: Any, prepared: list) -> dict[str, Callable[[], None]]:
    """For a Hugging Face folder: the model's own body (no unembedding), through ``transformers``
    alone, with eager attention (which materialises the pattern a heads site reads) and with
    SDPA, over the same batches, stopped after the last indexed layer. None for other models."""
    folder = Path(spec)
    if not (folder / "config.json").is_file():
        return {}
    import torch
    from transformers import AutoModelForCausalLM

    last = max(site.layer for site in run.plan)
    out = {}
    dtype = getattr(torch, run.cfg.dtype)
    for impl in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation=impl, dtype=dtype)
        body = model.base_model.to(run.device)
        layers = next(m for m in body.modules() if isinstance(m, torch.nn.ModuleList))
        del layers[last + 1:]  # stop at the last indexed layer, as the bridge's pass does
        body.eval()

        def forward(body: Any = body) -> None:
            with torch.inference_mode(), allocator.reuse():  # the allocator as the stream's (run/allocator.py)
                for batch in prepared:
                    body(input_ids=batch.tokens)
                    allocator.release()

        out[f"hf_{impl}"] = forward
    return out


def _alternate(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            _sync()
            started = time.perf_counter()
            fn()
            _sync()  # a GPU's queued work is part of the pass
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _naive_indexer(run: Any, prepared: list) -> Callable[[], None]:
    """Full forward with run_with_cache, then torch.topk over all tokens, merged per batch."""
    import torch

    from indexer.forward.head_metrics import HeadMetrics

    names = [name for site in run.plan for name in site.hook_names()]
    metrics = {site.layer: HeadMetrics(run.model.bridge, site.layer) for site in run.plan if site.name == "heads"}
    k = run.cfg.top_k

    def features(cache: Any) -> list[torch.Tensor]:
        out = []
        for site in run.plan:
            if site.name == "heads":
                v, pattern, z = (cache[n] for n in site.hook_names())
                out.append(metrics[site.layer](v, pattern, z))
            elif site.encoder is not None:  # an SAE site: its latents, from the cached activation
                out.append(site.encoder(cache[site.hook_names()[0]]))
            else:
                out.append(cache[site.hook_names()[0]].float())
        return out

    def naive() -> None:
        best: list[torch.Tensor | None] = [None] * len(run.plan)
        with torch.inference_mode(), allocator.reuse():
            for batch in prepared:
                _, cache = run.model.bridge.run_with_cache(batch.tokens, names_filter=names)
                for i, acts in enumerate(features(cache)):
                    flat = acts.reshape(-1, acts.shape[-1])  # [batch * pos, feat]
                    top = torch.topk(flat, min(k, flat.shape[0]), dim=0).values
                    merged = top if best[i] is None else torch.cat([best[i], top])
                    best[i] = torch.topk(merged, min(k, merged.shape[0]), dim=0).values
                allocator.release()

    return naive


def _peak_rss_mb(spec: str, tokens: int, batch_size: int, dtype: str, out: Path) -> float:
    """Peak resident memory of a whole `neuroscope index` run, in a fresh process."""
    code = (
        "import json, resource, sys\n"
        "from indexer.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(json.dumps({'code': code, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    args = ["index", "--model", spec, "--corpus", "code", "--corpus", "prose", "--out", str(out),
            "--tokens", str(tokens), "--batch-size", str(batch_size), "--dtype", dtype, "--quiet"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench index run failed: {done.stderr.strip().splitlines()[-1:]}")
    return round(json.loads(lines[-1])["maxrss_kb"] / 1024, 1)


def _random_gpt2_small(folder: Path) -> str:
    """A randomly initialised ``GPT2LMHeadModel`` shaped like GPT-2 small (12 layers x 3,072
    neurons, 12 x 12 heads, ctx 1024), written by ``save_pretrained`` with the embedded tokenizer
    (vocabulary 8192, so the embedding is smaller than GPT-2's; the blocks are the same)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from indexer.inputs.data import tokenizer_dir

    path = folder / RANDOM_GPT2_SMALL
    GPT2LMHeadModel(GPT2Config(vocab_size=8192, bos_token_id=0, eos_token_id=0)).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(tokenizer_dir())).save_pretrained(path)
    return str(path)


def _random_gelu_1l(folder: Path) -> str:
    """A randomly initialised model shaped like the field's gelu-1l, in neuroscope's folder format.

    It gets the embedded tokenizer: its ids (< 8192) are valid gelu-1l inputs, and throughput
    does not depend on which ids are fed."""
    from indexer.inputs.models import save_native_model

    return str(save_native_model(folder / RANDOM_GELU_1L, GELU_1L_SHAPE))
