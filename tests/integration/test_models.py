"""Model specs: embedded names, local folders in both formats, hub names offline, bad specs."""

from __future__ import annotations

import pytest
import torch

from indexer.errors import ModelSpecError
from indexer.inputs.models import embedded_names, load_model

EMBEDDED = ["toy-1l", "toy-1l-solu", "toy-2l"]


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_model_loads_and_predicts_text(name):
    assert name in embedded_names()
    model = load_model(name)
    info = model.info
    assert info.source == "embedded" and info.d_mlp >= 1024 and info.bos_token_id == 0
    assert info.act_fn == ("solu_ln" if "solu" in name else "gelu")
    assert info.n_layers == (2 if name == "toy-2l" else 1)
    # A trained model predicts a frequent continuation far better than chance.
    ids = model.tokenizer("def __init__(self, name):\n        self.name = name\n", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([[info.bos_token_id] + ids])
    with torch.inference_mode():
        logits = model.bridge(tokens)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    assert loss.item() < 4.0, loss.item()  # uniform guessing over 8192 tokens is 9.0 nats


def test_local_native_folder(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    assert model.info.source == "local-native" and model.info.n_layers == 2 and model.info.d_mlp == 64


def test_local_hugging_face_folder(hf_model_dir):
    model = load_model(str(hf_model_dir))
    assert model.info.source == "local-hf"
    assert (model.info.n_layers, model.info.d_model, model.info.n_heads, model.info.n_ctx) == (2, 32, 4, 64)
    assert model.info.d_mlp == 128
    seen = {}

    def record(tensor, hook):  # returns None: the activation is left as it is
        seen["post"] = tensor.shape

    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", record)]):
        model.bridge(torch.tensor([[0, 5, 6, 7]]))
    assert seen["post"] == (1, 4, 128)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gelu-1l", "offline"),
        ("EleutherAI/pythia-70m", "offline"),
        ("no-such-model", "embedded models: toy-1l"),
        ("/no/such/folder", "does not exist"),
    ],
)
def test_bad_model_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        load_model(spec)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelSpecError, match="not a model folder"):
        load_model(str(tmp_path))


def test_hf_folder_with_broken_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSpecError, match="cannot load"):
        load_model(str(tmp_path))


def test_bfloat16_loads_bfloat16_weights_and_indexes_like_float32(tiny_model_dir, hf_model_dir, tmp_path):
    """--dtype bfloat16 loads the weights in bf16 (half the memory of float32, what the
    estimate counts) for both folder formats, and the index agrees with the float32 one up to
    bf16's rounding."""
    import numpy as np

    from indexer.api import Index
    from indexer.run.engine import index

    from helpers.configs import base_config

    for folder in (tiny_model_dir, hf_model_dir):
        assert {p.dtype for p in load_model(str(folder), dtype="bfloat16").bridge.parameters()} == {torch.bfloat16}
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = base_config(str(hf_model_dir), str(tmp_path / dtype), dtype=dtype, sites=("mlp_post",))
        index(cfg, progress=False)
        runs[dtype] = Index.open(cfg.out).sql("SELECT mean, max FROM neurons ORDER BY layer, neuron")
    for column in ("mean", "max"):
        np.testing.assert_allclose(runs["bfloat16"][column], runs["float32"][column], rtol=0.05, atol=0.02)
