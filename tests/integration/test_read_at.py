"""Features read at one position per sequence (``Batch.read_at``), what the analyses that
re-run the model ask for: computed only there (an SAE encodes one token per row, and the
last layer's MLP runs on those tokens only), and equal to the full pass read there. The
narrowed MLP is checked against the full pass on the first such batch and dropped where it
differs (an MLP that is not position-wise)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.configs import base_config
from helpers.saes import write_saelens

from indexer.forward.hooks import narrowing_hook
from indexer.forward.sites import Site

TOLERANCE = 1e-5  # float32: a narrowed matmul may round differently from the full one


@pytest.fixture(scope="module")
def indexed(tiny_model_dir, tmp_path_factory):
    """An index of the tiny 2-layer model with neurons, random directions and an SAE on layer
    1's MLP output: every site of the last layer reads its MLP."""
    from indexer.run.engine import index

    root = tmp_path_factory.mktemp("read_at")
    sae = write_saelens(root / "sae", "topk", "blocks.1.hook_mlp_out", 32, 48, k=4, seed=1)
    out = root / "ix"
    index(base_config(str(tiny_model_dir), str(out), sites=("mlp_post", "random:4"), tokens=600, sae=[f"out={sae}"]),
          progress=False)
    return out


def _sequences(ix) -> list[np.ndarray]:
    contexts = ix.contexts()
    return [t[: p + 1] for _, t in sorted(contexts.items())[:4] for p in range(1, len(t), 3)]


def _read_at_and_full(ix, forward, sequences):
    """Each site's features at every sequence's last token: (with read_at, from the full pass)."""
    width = max(map(len, sequences))
    last = np.array([len(s) - 1 for s in sequences])
    narrowed = forward(ix._batch(sequences, width, last=True))
    full = forward(ix._batch(sequences, width))
    rows = np.arange(len(sequences))
    return ({s.key: a[:, 0].numpy() for s, a in narrowed.items()},
            {s.key: a[rows, last].numpy() for s, a in full.items()})


def _max_error(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(float(np.abs(got[k] - want[k]).max() / max(np.abs(want[k]).max(), 1e-30)) for k in want)


def test_features_read_at_the_last_token_equal_the_full_pass_with_the_last_mlp_narrowed(indexed):
    from indexer.analyses.common import IndexContext, Options

    ix = IndexContext(indexed, Options(progress=False))
    try:
        forward, plan = ix._forward([0, 1])
        assert {s.name for s in plan} >= {"mlp_post", "random", "sae:out"}
        sequences = _sequences(ix)
        for _ in range(2):  # the first batch checks the narrowed MLP against the full pass; the second uses it
            got, want = _read_at_and_full(ix, forward, sequences)
            assert _max_error(got, want) <= TOLERANCE
        assert forward._narrow is not None  # kept: layer 1's MLP ran on one token per row
        assert all(a.shape[1] == 1 for a in forward(ix._batch(sequences, 40, last=True)).values())
    finally:
        ix.close()


def test_an_mlp_that_mixes_positions_is_not_narrowed(indexed):
    """A hook that makes layer 1's MLP depend on other positions (a running sum): the check on
    the first batch finds the narrowed pass differs, and every batch gets the full pass's values."""
    from indexer.analyses.common import IndexContext, Options

    ix = IndexContext(indexed, Options(progress=False))
    try:
        forward, _ = ix._forward([0, 1])
        sequences = _sequences(ix)
        mixing = [("blocks.1.mlp.hook_pre", lambda tensor, hook: tensor.cumsum(1))]
        with ix.model.bridge.hooks(fwd_hooks=mixing):
            for _ in range(2):
                got, want = _read_at_and_full(ix, forward, sequences)
                assert _max_error(got, want) <= TOLERANCE
        assert forward._narrow is None
    finally:
        ix.close()


def test_the_mlp_is_narrowed_only_where_every_site_of_the_last_layer_reads_it(indexed):
    from indexer.analyses.common import IndexContext, Options

    ix = IndexContext(indexed, Options(progress=False))
    try:
        bridge = ix.model.bridge
        post, pick = Site("mlp_post", 1, 64), (lambda t: t)
        assert narrowing_hook(bridge, [Site("heads", 0, 20), post], pick)[0] == "blocks.1.mlp.hook_in"
        assert narrowing_hook(bridge, [post, Site("sae:x", 1, 32, hook="blocks.1.hook_mlp_out")], pick) is not None
        assert narrowing_hook(bridge, [post, Site("heads", 1, 20)], pick) is None  # attention reads every position
        assert narrowing_hook(bridge, [post, Site("sae:x", 1, 32, hook="blocks.1.hook_resid_post")], pick) is None
        assert narrowing_hook(bridge, [Site("sae:x", 0, 32, hook="blocks.0.hook_resid_pre")], pick) is None
    finally:
        ix.close()
