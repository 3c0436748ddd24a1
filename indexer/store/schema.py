"""On-disk tables: one frozen dataclass each; the Arrow schema, the DuckDB types and the paths
derive from it, so columns are written down exactly once.

A field's annotation gives its type: ``int`` -> int64, ``float`` -> float64, ``str``, ``bool``,
``list[T]``; ``Int32`` / ``Float32`` say where the narrower Arrow type is wanted. A field with a
default (``= None``) is optional: the writer fills it with nulls when it is not given.

Partition columns (``PARTITIONS``) are kept as real columns inside every file *and* appear in
the hive path (``neurons/site=mlp_post/layer=3/part-0.parquet``). Inside the file they keep their
exact type, so pandas reading one file sees them; DuckDB reads with ``hive_partitioning`` and
``hive_types`` taken from here, so it prunes whole files on ``WHERE layer = 3`` and still
reports ``layer`` as INTEGER (without hive_types it would infer BIGINT).
"""

from __future__ import annotations

from typing import ClassVar

from indexer.store.table import Float32, Int32, HeadKey, NeuronKey, SlotColumns, StatColumns, Table, WhereColumns, table

# Example rows carry a window (tens of tokens, ids + values) and text: ~0.5-1 KB each, so
# 4k-row groups (~4 MB) let a neuron page read one small group instead of a 64 MB one.
_EXAMPLE_ROWS = 4096


@table
class Vocab(Table):
    NAME: ClassVar[str] = "vocab"
    LOCATION: ClassVar[str] = "vocab.parquet"
    token_id: Int32
    token_str: str


@table
class Contexts(Table):
    NAME: ClassVar[str] = "contexts"
    LOCATION: ClassVar[str] = "contexts"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("corpus",)
    # A row holds up to 1024 token ids (~4 KB): 4k rows keep a group near 16 MB.
    ROW_GROUP_ROWS: ClassVar[int] = 4096
    ctx_id: int
    corpus: str
    doc_id: int
    token_ids: list[Int32]
    n_tokens: Int32


@table
class Neurons(StatColumns, NeuronKey):
    NAME: ClassVar[str] = "neurons"
    LOCATION: ClassVar[str] = "neurons"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("site", "layer")


@table
class Examples(WhereColumns, SlotColumns, NeuronKey):
    NAME: ClassVar[str] = "examples"
    LOCATION: ClassVar[str] = "examples"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("site", "layer")
    ROW_GROUP_ROWS: ClassVar[int] = _EXAMPLE_ROWS


@table
class Heads(StatColumns, HeadKey):
    NAME: ClassVar[str] = "heads"
    LOCATION: ClassVar[str] = "heads"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("layer",)


@table
class HeadExamples(WhereColumns, SlotColumns, HeadKey):
    NAME: ClassVar[str] = "head_examples"
    LOCATION: ClassVar[str] = "head_examples"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("layer",)
    ROW_GROUP_ROWS: ClassVar[int] = _EXAMPLE_ROWS
    ALIASES: ClassVar[dict[str, str]] = {"value": "activation", "window_values": "window_acts"}


@table
class HeadScores(Table):
    """One row per head: how much it behaves like each known head type (higher = more)."""

    NAME: ClassVar[str] = "head_scores"
    LOCATION: ClassVar[str] = "head_scores.parquet"
    layer: Int32
    head: Int32
    prev_token: Float32
    induction: Float32
    duplicate_token: Float32
    bos: Float32


@table
class HeadWiki(Table):
    """One row per head, a column per score (indexer.forward.head_scores): the head wiki. Its
    max-activating examples are head_examples rows with the same (layer, head), per metric."""

    NAME: ClassVar[str] = "head_wiki"
    LOCATION: ClassVar[str] = "head_wiki.parquet"
    layer: Int32
    head: Int32
    prev_token: Float32
    induction: Float32
    duplicate_token: Float32
    bos: Float32
    self_attention: Float32
    mean_attn_distance: Float32  # tokens, on the [BOS] r r probe
    successor: Float32  # NaN when the tokenizer has no ordinal sequences


@table
class HeadComposition(Table):
    """Q-/K-/V-composition of an earlier head (a) into a later one (b), from the weights
    (indexer.forward.head_composition)."""

    NAME: ClassVar[str] = "head_composition"
    LOCATION: ClassVar[str] = "head_composition.parquet"
    layer_a: Int32
    head_a: Int32
    layer_b: Int32
    head_b: Int32
    kind: str  # 'q', 'k' or 'v'
    score: Float32


@table
class HeadAttention(SlotColumns, HeadKey):
    """Where a head example's destination token attends: the window's source positions with
    weight >= a small threshold, largest first, bounded per example (indexer.run.head_attention).
    Joins head_examples on (layer, head, metric, kind, bin, rank)."""

    NAME: ClassVar[str] = "head_attention"
    LOCATION: ClassVar[str] = "head_attention"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("layer",)
    ctx_id: int
    pos: Int32  # the destination (query) position
    src_pos: list[Int32]  # context positions of the source (key) tokens
    weights: list[Float32]  # attention from pos to each src_pos


@table
class RandomDirections(NeuronKey):
    """The directions of a ``random`` site (``--sites random:K``): feature ``neuron`` of layer L is
    ``direction . of_site`` at every token (indexer.forward.random_sites)."""

    NAME: ClassVar[str] = "random_directions"
    LOCATION: ClassVar[str] = "random_directions.parquet"
    of_site: str  # the site whose activation space the directions live in (mlp_post)
    direction: list[Float32]  # a unit vector of that site's width


# A replay (`neuroscope replay`): an index's examples re-run through other checkpoints.


@table
class ReplayFeatures(NeuronKey):
    """Per feature and checkpoint of a replay: how the feature's examples in the source index
    fare under another model of the same shape (indexer.run.replay_stats)."""

    NAME: ClassVar[str] = "replay_features"
    LOCATION: ClassVar[str] = "replay_features"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("checkpoint",)
    checkpoint: str  # the checkpoint's label
    step: Int32  # its place in the replay's --model list (0 = the first)
    n_examples: Int32  # top and quantile examples compared
    rank_correlation: float  # Spearman of the new against the original activations over them (1 = same order)
    top_ratio: float  # mean new / mean original activation over the top examples
    orig_max: float  # the largest activation among the examples in the index
    new_top_max: float  # the checkpoint's largest activation on the original top examples' tokens
    new_max: float  # the checkpoint's largest activation anywhere in the examples' contexts
    new_max_ctx_id: int
    new_max_pos: Int32
    new_max_token_str: str
    changed: bool  # rank_correlation or top_ratio past the replay's thresholds


@table
class ReplayExamples(SlotColumns, NeuronKey):
    """Per example of the source index and checkpoint: its activation there and under the
    checkpoint; top examples also carry the checkpoint's values over their window."""

    NAME: ClassVar[str] = "replay_examples"
    LOCATION: ClassVar[str] = "replay_examples"
    PARTITIONS: ClassVar[tuple[str, ...]] = ("checkpoint",)
    ROW_GROUP_ROWS: ClassVar[int] = _EXAMPLE_ROWS
    checkpoint: str
    step: Int32
    corpus: str
    ctx_id: int
    pos: Int32
    token_str: str
    activation: Float32  # in the source index (its model)
    new_activation: Float32  # under this checkpoint
    window_start: Int32 | None = None
    window_token_ids: list[Int32] | None = None
    window_acts: list[Float32] | None = None  # the checkpoint's values over the window (top examples)


# Analyses: written later by `neuroscope analyze`, one folder each under analyses/.


@table
class Flags(NeuronKey):
    NAME: ClassVar[str] = "flags"
    LOCATION: ClassVar[str] = "analyses/flags"
    flag: str  # 'dead', 'polysemantic', ...
    score: float
    detail: str


@table
class RegexScores(NeuronKey):
    NAME: ClassVar[str] = "regex_scores"
    LOCATION: ClassVar[str] = "analyses/regex_scores"
    pattern_name: str
    pattern: str
    precision: float
    recall: float
    f1: float
    correlation: float | None = None  # of the activation with the match (0/1), over the sample
    threshold: float | None = None  # "active" means activation > threshold
    top_fraction: float | None = None  # share of the neuron's top examples where the pattern matches
    base_rate: float | None = None  # share of the sample's tokens where the pattern matches
    specificity: float | None = None  # active inside the pattern beyond chance (indexer.pattern_score)
    n_active: int | None = None  # tokens of the sample where the neuron is active


@table
class TrigramScores(NeuronKey):
    NAME: ClassVar[str] = "trigram_scores"
    LOCATION: ClassVar[str] = "analyses/trigram_scores"
    score: float
    prev_token_str: str
    token_str: str
    pair_share: float | None = None  # share of top examples on the (prev, current) pair
    prev_survival: float | None = None  # activation kept when the previous token is replaced
    current_survival: float | None = None  # ... when the current token is replaced
    back_survival: float | None = None  # ... when the token before the previous one is replaced
    n_examples: int | None = None


@table
class TokenSaliency(NeuronKey):
    """Per top example and token of the window ending at it: the drop in the feature's
    activation when that token is replaced (indexer.analyses.saliency)."""

    NAME: ClassVar[str] = "token_saliency"
    LOCATION: ClassVar[str] = "analyses/token_saliency"
    rank: Int32  # rank of the top example
    ctx_id: int
    pos: Int32  # context position of the example's token
    token_pos: Int32  # context position of the replaced token (pos itself included)
    token_id: Int32
    token_str: str
    activation_drop: float  # baseline minus the mean activation with the token replaced
    rel_drop: float  # drop / baseline: 1 = the activation is gone, < 0 = it grew
    salience_rank: Int32  # 0 = the token whose replacement drops the activation most in this example
    baseline: float  # the activation at pos on the window alone (BOS + the window's tokens)
    method: str  # 'frequent', 'random' or 'noise'


@table
class MinimalExamples(NeuronKey):
    NAME: ClassVar[str] = "minimal_examples"
    LOCATION: ClassVar[str] = "analyses/minimal_examples"
    rank: Int32  # rank of the top example it was cut from
    start: Int32  # context position of the first kept token
    length: Int32
    kept_fraction: float  # activation on the cut text / activation on the full context
    ctx_id: int | None = None
    pos: Int32 | None = None  # context position of the example's token (the cut's last token)
    text: str | None = None  # the cut text
    found: bool | None = None  # whether some cut up to the longest tried kept enough


@table
class MinimalSummary(NeuronKey):
    """Per neuron: how often truncating a top example keeps its activation."""

    NAME: ClassVar[str] = "minimal_summary"
    LOCATION: ClassVar[str] = "analyses/minimal_summary"
    n_examples: Int32
    frac_within_8: float  # share of examples whose minimal cut has <= 8 tokens
    median_length: float


@table
class LogitEffects(Table):
    NAME: ClassVar[str] = "logit_effects"
    LOCATION: ClassVar[str] = "analyses/logit_effects"
    layer: Int32
    neuron: Int32
    direction: str  # 'up' or 'down'
    rank: Int32
    token_id: Int32
    token_str: str
    value: float


@table
class LatentLogitEffects(LogitEffects):
    """Per SAE latent (neuron = latent index): the tokens its decoder row directly boosts and
    suppresses, W_dec[i] @ W_U with the final norm folded as for neurons; ``site`` is
    ``sae:NAME``, or ``random`` for a random direction u ((u @ W_out) @ W_U) (the columns of
    ``logit_effects``, then site)."""

    NAME: ClassVar[str] = "latent_logit_effects"
    LOCATION: ClassVar[str] = "analyses/latent_logit_effects"
    site: str


@table
class LatentNeurons(NeuronKey):
    """Links between an SAE's latents and the MLP neurons of the layer it reads: keyed by the
    neuron (site, layer, neuron); ``role`` 'reads' = how much the latent's encoder reads the
    neuron, 'writes' = how much its decoder writes along the neuron (see analyses.latents)."""

    NAME: ClassVar[str] = "latent_neurons"
    LOCATION: ClassVar[str] = "analyses/latent_neurons"
    sae_site: str
    latent: Int32
    role: str  # 'reads' or 'writes'
    weight: float
    rank_in_latent: Int32  # 0 = the neuron the latent weighs most (by |weight|)
    rank_in_neuron: Int32  # 0 = the latent that weighs this neuron most (by |weight|)


@table
class LogitAgreement(Table):
    """Per neuron: do the tokens its output boosts follow its top examples?"""

    NAME: ClassVar[str] = "logit_agreement"
    LOCATION: ClassVar[str] = "analyses/logit_agreement"
    layer: Int32
    neuron: Int32
    site: str  # the site whose top examples were compared
    score: float  # mean percentile of the next tokens in the neuron's logit effects (0.5 = chance)
    top10_hit_rate: float  # share of next tokens among the 10 most boosted
    n_examples: Int32


@table
class SiteAgreement(Table):
    """Per neuron and pair of indexed sites of its layer: how many top-k contexts they share."""

    NAME: ClassVar[str] = "site_agreement"
    LOCATION: ClassVar[str] = "analyses/site_agreement"
    layer: Int32
    neuron: Int32
    site_a: str
    site_b: str
    top_k_overlap: float  # |contexts of A ∩ contexts of B| / k
    k: Int32 | None = None


@table
class ExpertUsage(Table):
    """Per mixture-of-experts layer and expert: how often its router chose it (analysis ``experts``)."""

    NAME: ClassVar[str] = "expert_usage"
    LOCATION: ClassVar[str] = "analyses/expert_usage"
    layer: Int32
    expert: Int32
    n_tokens: int  # tokens routed to the expert
    n_tokens_read: int  # tokens the analysis read (BOS excluded)
    share: float  # n_tokens / n_tokens_read (a layer's shares sum to its top-k)


TABLES: tuple[type[Table], ...] = (
    Vocab,
    Contexts,
    Neurons,
    Examples,
    Heads,
    HeadExamples,
    HeadScores,
    HeadWiki,
    HeadComposition,
    HeadAttention,
    RandomDirections,
    ReplayFeatures,
    ReplayExamples,
    Flags,
    RegexScores,
    TrigramScores,
    TokenSaliency,
    MinimalExamples,
    LogitEffects,
    MinimalSummary,
    LatentLogitEffects,
    LatentNeurons,
    LogitAgreement,
    SiteAgreement,
    ExpertUsage,
)
BY_NAME: dict[str, type[Table]] = {t.NAME: t for t in TABLES}
