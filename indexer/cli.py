"""The `neuroscope` command line. Domain errors become one-line messages here and nowhere else.

Heavy modules are imported inside the commands that need them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import typing
from pathlib import Path
from typing import Any, Callable

from indexer.config import IndexConfig
from indexer.errors import ConfigError, NeuroscopeError
from indexer.export.options import add_arguments as export_arguments

DEMO_DIR = Path("out/demo")
HEADS_DEMO_TOKENS = 300_000  # toy-attn-2l for the head pages: 32 head features, a few seconds


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per IndexConfig field; the field's help is the option's help."""
    hints = typing.get_type_hints(IndexConfig)
    for f in dataclasses.fields(IndexConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"].replace("%", "%%")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name in ("corpus", "sae"):
            metavar = "[NAME=]SPEC" if f.name == "corpus" else "[NAME=]PATH"
            parser.add_argument(flag, action="append", default=[], metavar=metavar, help=help_text)
        elif f.metadata["parse"] is not None:  # a list or a choice: parsed by IndexConfig.parse
            default = f.metadata["cli"] or f.default
            parser.add_argument(flag, type=str, default=default, help=_with_default(help_text, default))
        else:
            base = int if kind in (int, int | None) else float if kind is float else str
            default = f.default if f.default is not dataclasses.MISSING else None
            parser.add_argument(flag, type=base, default=default, help=_with_default(help_text, default))
    # Accepted so older command lines still run; it has done nothing since quantile edges come from all tokens.
    parser.add_argument("--warmup-tokens", type=int, default=None, help=argparse.SUPPRESS)


def _with_default(help_text: str, default: Any) -> str:
    """The help, with "(default: X)" unless there is no default to show or the help says it already."""
    if default in (None, "") or "default" in help_text:
        return help_text
    return f"{help_text} (default: {default})"


def cmd_index(args: argparse.Namespace) -> int:
    if args.warmup_tokens is not None:
        print("neuroscope: note: --warmup-tokens is ignored (quantile edges come from all tokens indexed)", file=sys.stderr)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(IndexConfig)}
    cfg = IndexConfig.parse(values)
    if getattr(args, "dry_run", False):  # the plan from the model's config alone
        from indexer.run.dry_run import dry_run

        dry_run(cfg)
        return 0
    if cfg.dask:  # scale-out: indexer.scaleout (imports Dask only now)
        from indexer.scaleout.job import index_on_dask as index
    else:  # (after --dry-run: the engine imports torch and the model code)
        from indexer.run.engine import index
    out = index(cfg, progress=not args.quiet)
    print(f"index written to {out}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from indexer.store.query import run_sql
    from indexer.store.results import format_result

    query = args.query if args.arg is None else f"{args.query} {args.arg}"
    df, truncated = run_sql(args.dir, query, limit=args.limit, timeout_s=args.timeout)
    sys.stdout.write(format_result(df, args.format).rstrip("\n") + "\n")
    if truncated:
        print(f"(truncated at {args.limit} rows; use --limit)", file=sys.stderr)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from indexer.analyses.common import Options
    from indexer.analyses.runner import analyze

    options = Options(device=args.device, dtype=args.dtype, top_ranks=args.top_ranks,
                      keep_fraction=args.keep_fraction, sample_tokens=args.sample_tokens, saliency=args.saliency,
                      progress=not args.quiet)
    report = analyze(args.dir, only=args.only, force=args.force, options=options)
    for name, r in report.items():
        extra = "(already done; --force to redo)" if r["status"] == "skipped" else f"in {r['seconds']:.1f} s"
        print(f"{name}: {r['status']} {extra}  rows: {r.get('rows', {})}")
    return 0


def cmd_regex(args: argparse.Namespace) -> int:
    import json

    from indexer.analyses.common import Options
    from indexer.analyses.regex import check

    result = check(args.dir, args.layer, args.neuron, args.pattern, site=args.site, threshold=args.threshold,
                   sample_tokens=args.sample_tokens, time_limit_s=args.time_limit,
                   options=Options(device=args.device, progress=not args.quiet))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from indexer.run.replay import replay

    out = replay(args.dir, args.model, args.out, device=args.device, dtype=args.dtype, overwrite=args.overwrite,
                 progress=not args.quiet)
    print(f"replay written to {out} (view it: neuroscope view {args.dir} {out}; neuroscope sql {out} replay-changed)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from indexer.run.merge import merge

    out = merge(args.shards, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(f"merged index written to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from indexer.run.bench import bench

    if args.rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    result = bench(args.model, tokens=args.tokens, batch_size=args.batch_size, dtype=args.dtype,
                   memory=not args.no_memory, configs=tuple(args.config) if args.config else None, rounds=args.rounds,
                   naive=not args.no_naive)
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from indexer.run.bench import DEMO_SAE
    from indexer.run.engine import index

    out = Path(args.out)
    config = IndexConfig(  # toy-1l's neurons, heads and the latents of its embedded SAE, in one pass
        model="toy-1l", corpus=["code", "prose"], out=str(out), tokens=args.tokens, overwrite=out.exists(),
        sae=[DEMO_SAE],
    )
    index(config, progress=True)
    print(f"demo index written to {out}\n")
    _demo_analyses(out)
    _print_demo_summary(out)
    heads = _demo_heads(out, args.tokens)
    if args.no_view:
        return 0
    if importlib.util.find_spec("viewer.launch") is None:
        print("(the viewer is not part of this version yet: explore with `neuroscope sql` or indexer.api.Index)")
        return 0
    return _view([out, heads], args.host, args.port)  # both indexes, a picker in the sidebar


def _demo_analyses(out: Path) -> None:
    """Run every analysis on the demo index (about 3 minutes for toy-1l and its SAE at 1M tokens on 2 cores), so
    the viewer's flags, logit effects, minimal examples and regex sections have content."""
    from indexer.analyses.runner import analyze

    for name, r in analyze(out, force=True).items():
        print(f"analysis {name}: {r['status']} in {r.get('seconds', 0):.1f} s")
    print()


def _demo_heads(out: Path, tokens: int) -> Path:
    """Index the embedded attention-only toy-attn-2l (which has an induction head) next to the
    demo index, for the head pages: toy-1l's one layer cannot hold an induction circuit."""
    from indexer.run.engine import index
    from indexer.store.query import run_sql
    from indexer.store.results import format_result

    heads = out.with_name(out.name + "-heads")
    config = IndexConfig(model="toy-attn-2l", corpus=["code", "prose"], out=str(heads),
                         tokens=min(tokens, HEADS_DEMO_TOKENS), overwrite=heads.exists())
    index(config, progress=True)
    print(f"\nhead index of toy-attn-2l written to {heads} (the viewer opens both: neuroscope view {out} {heads})\n")
    queries = {
        "toy-attn-2l: heads most like induction heads": "induction-heads",
        "toy-attn-2l: where the best induction head attends most (max_attn top examples)": (
            "SELECT e.layer, e.head, e.activation, e.token_str, e.context_text FROM head_examples e "
            "JOIN (SELECT layer, head FROM head_wiki ORDER BY induction DESC LIMIT 1) t USING (layer, head) "
            "WHERE e.metric = 'max_attn' AND e.kind = 'top' ORDER BY e.rank"
        ),
    }
    for title, query in queries.items():
        df, _ = run_sql(heads, query, limit=5)
        print(f"{title}:\n{format_result(df, 'table')}\n")
    return heads


def _print_demo_summary(out: Path) -> None:
    from indexer.store.query import run_sql
    from indexer.store.results import format_result

    queries = {
        "Neurons with the highest activations": "top-neurons",
        "Their best examples": (
            "SELECT e.layer, e.neuron, e.activation, e.corpus, e.token_str, e.context_text "
            "FROM examples e JOIN (SELECT site, layer, neuron FROM neurons WHERE site = 'mlp_post' ORDER BY max DESC "
            "LIMIT 5) t USING (site, layer, neuron) WHERE e.kind = 'top' AND e.rank = 0 ORDER BY e.activation DESC"
        ),
        "Heads most like induction heads": "induction-heads",
        "SAE latents (toy-1l-mlp-out) with the highest activations": (
            "SELECT site, neuron AS latent, max, frac_active FROM neurons WHERE site LIKE 'sae:%' "
            "ORDER BY max DESC"
        ),
        "The latents that read most from neuron 7": (
            "SELECT sae_site, latent, weight, rank_in_neuron FROM latent_neurons "
            "WHERE site = 'mlp_post' AND layer = 0 AND neuron = 7 AND role = 'reads' ORDER BY rank_in_neuron"
        ),
    }
    for title, query in queries.items():
        df, _ = run_sql(out, query, limit=5)
        print(f"{title}:\n{format_result(df, 'table')}\n")
    print(f"Try: neuroscope sql {out} \"SELECT * FROM examples WHERE layer = 0 AND neuron = 7 ORDER BY kind, bin, rank\"")


def cmd_view(args: argparse.Namespace) -> int:
    return _view([Path(d) for d in args.dirs], args.host, args.port)


def _view(index_dirs: list[Path], host: str, port: int) -> int:
    from indexer.store.query import open_index

    try:
        from viewer.indexes import expand
        from viewer.launch import launch
    except ImportError:
        raise NeuroscopeError("the viewer is not built yet; query the index with `neuroscope sql`") from None
    for d in expand(index_dirs):
        open_index(d).close()  # a clear error now rather than in the browser
    return launch(index_dirs, host=host, port=port)


def cmd_export_html(args: argparse.Namespace) -> int:
    import time

    from viewer.export import export_html

    started = time.perf_counter()
    out = export_html(args.dir, args.out, progress=not args.quiet)
    print(f"static site written to {out}/index.html in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from indexer.export.runner import run_cli

    return run_cli(args)


def _later(what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise NeuroscopeError(f"`neuroscope {what}` is not available yet in this version")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroscope", description="Index, query and browse what neurons and heads do.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("index", help="index a model over corpora (top-k, quantile samples, stats)")
    _add_config_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (sites, features, memory estimate, tokens) from the model's config only and exit")
    p.set_defaults(run=cmd_index)

    p = sub.add_parser("merge", help="combine shard indexes into one")
    p.add_argument("shards", nargs="+", metavar="SHARD_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an index")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=cmd_merge)

    p = sub.add_parser("analyze", help="minimal examples, regex, trigram, token saliency, flags, logit effects, site agreement")
    p.add_argument("dir")
    p.add_argument("--only", default="all", help="comma list of minimal,regex,trigram,saliency,flags,logits,latents,agreement,experts (default: all)")
    p.add_argument("--force", action="store_true", help="redo analyses already done")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--top-ranks", type=int, default=5, help="top examples per neuron re-run by minimal, trigram and saliency (default: 5)")
    p.add_argument("--saliency", default="frequent", choices=("frequent", "random", "noise"),
                   help="how saliency corrupts each token: a frequent token (default), a random token, or Gaussian noise on its embedding")
    p.add_argument("--keep-fraction", type=float, default=0.5, help="minimal examples keep this share of the activation")
    p.add_argument("--sample-tokens", type=int, default=100_000, help="tokens the regex library is scored on")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("replay", help="re-run an index's examples through other checkpoints of its model (fine-tuned, "
                                      "earlier): rank correlation, new max, a trajectory per feature")
    p.add_argument("dir", help="the index whose contexts and features are replayed")
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]SPEC",
                   help="a model of the index's shape and tokenizer; repeat for a trajectory, in order (label: the "
                        "spec's last path part unless given)")
    p.add_argument("--out", required=True, help="the replay folder (an index folder; rerun to resume or add models)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds another replay or index")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_replay)

    p = sub.add_parser("regex", help="how well a regex explains a neuron (JSON metrics)")
    p.add_argument("dir")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--neuron", type=int, required=True)
    p.add_argument("--pattern", required=True, help="RE2 syntax runs in linear time; others run on Python's re under --time-limit")
    p.add_argument("--site", default=None, help="neuron site (default: the layer's output site, e.g. mlp_post)")
    p.add_argument("--threshold", type=float, default=None, help="active means > this (default: half the neuron's max)")
    p.add_argument("--sample-tokens", type=int, default=50_000, help="tokens of stored contexts re-run (default: 50000)")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds a non-RE2 pattern may run")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=cmd_regex)

    p = sub.add_parser("sql", help="run a read-only SQL query (or a canned query name) on an index")
    p.add_argument("dir")
    p.add_argument("query", help="SQL, or a canned query name such as dead-neurons")
    p.add_argument("arg", nargs="?", default=None, help="the argument of a canned query that takes one (token-neurons ' dog')")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--limit", type=int, default=1000, help="row cap (default: 1000)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before the query is stopped (default: 30)")
    p.set_defaults(run=cmd_sql)

    p = sub.add_parser("view", help="browse one or more indexes in the Streamlit viewer")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="an index, or a folder of indexes; several: a picker in the sidebar")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(run=cmd_view)

    p = sub.add_parser("export-html", help="write a static site, one page per neuron and head")
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_export_html)

    p = sub.add_parser("export", help="write an index in a format other tools read: neuronpedia, neuron-record, delphi, headvis")
    export_arguments(p)
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("demo", help="index the embedded toy-1l (and toy-attn-2l's heads) over the embedded corpora, then view it")
    p.add_argument("--out", default=str(DEMO_DIR))
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--no-view", action="store_true", help="stop after indexing")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("bench", help="indexing throughput vs the bare forward pass and a naive indexer (JSON)")
    p.add_argument("--model", default="toy-1l", help="model spec, or 'gelu-1l-random' (a random gelu-1l-shaped model) or 'gpt2-small-random' (a random Hugging Face GPT-2-small-shaped model)")
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--config", action="append", choices=("mlp", "mlp+heads", "mlp+sae"),
                   help="time only this configuration (repeatable; default: all; mlp+sae: toy-1l's neurons and its embedded SAE)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per pass; the fastest is kept")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs at N and 4N tokens")
    p.add_argument("--no-naive", action="store_true",
                   help="skip the naive indexer (no vs_naive): it caches every site's activations and patterns, "
                        "slow at tens of thousands of features")
    p.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `neuroscope` alone: the list of commands, not an error about a missing one
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except NeuroscopeError as e:
        print(f"neuroscope: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only folder... anywhere: one line, not a trace
        where = f" ({e.filename})" if e.filename else ""
        print(f"neuroscope: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("neuroscope: interrupted (an index run keeps its last checkpoint: rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
