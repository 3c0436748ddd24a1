"""`--device-map`: a Hugging Face model split over devices. Here every device is the CPU (no
second device exists), which checks the loading path and that the index is the one-device
index; tests/unit/test_devices.py checks that each site's recorders follow its layer's device."""

from __future__ import annotations

import json

import pytest

from indexer.config import IndexConfig
from indexer.errors import ConfigError, ModelSpecError
from indexer.run.engine import index

from helpers.configs import base_config
from helpers.indexes import assert_same_index


def test_a_split_model_indexes_as_the_whole_one(hf_model_dir, tmp_path):
    whole = base_config(str(hf_model_dir), str(tmp_path / "whole"), device="cpu")
    index(whole, progress=False)
    layers = {f"transformer.h.{i}": "cpu" for i in range(2)}
    split = base_config(str(hf_model_dir), str(tmp_path / "split"), device="cpu",
                        device_map=json.dumps({"transformer.wte": "cpu", "transformer.wpe": "cpu", **layers,
                                               "transformer.ln_f": "cpu", "lm_head": "cpu"}))
    index(split, progress=False)
    assert_same_index(whole.out, split.out)
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert json.loads(manifest["config"]["device_map"])["transformer.h.1"] == "cpu" and manifest["device"] == "cpu"


def test_device_map_mistakes_are_one_line(tiny_model_dir, tmp_path):
    with pytest.raises(ModelSpecError, match="splits Hugging Face models"):
        index(base_config(str(tiny_model_dir), str(tmp_path / "native"), device_map="auto"), progress=False)
    for bad in ("[1]", "{}", "everywhere"):
        with pytest.raises(ConfigError, match="--device-map"):
            IndexConfig.parse(dict(model="toy-1l", corpus=["code"], out=str(tmp_path / "o"), device_map=bad)).validate()
    with pytest.raises(ConfigError, match="--dask"):
        IndexConfig.parse(dict(model="toy-1l", corpus=["code"], out=str(tmp_path / "o"), device_map="auto",
                               dask="local:2")).validate()


def test_recorders_on_accelerators_are_sized_and_checked_against_each_devices_free_memory(
        tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A run whose sites live on two accelerators (placed here by hand, as a model split over
    two GPUs places them; the free memory of each is what the model left there) grows the
    sample-window pool into their spare memory, prints each device's figures, and refuses in
    one line naming the device whose recorders do not fit."""
    from indexer.run import safety
    from indexer.run.engine import Run

    cfg = base_config(str(tiny_model_dir), str(tmp_path / "x"), device="cpu")
    run = Run.open(cfg, tmp_path / "x")
    run.site_device = {site: f"cuda:{site.layer}" for site in run.plan}
    free = {"cuda:0": 1 << 40, "cuda:1": 1 << 40}
    monkeypatch.setattr(safety, "device_free_memory", lambda device: free[device])
    assert run.size_memory()["pool_per_sample"] == 6.0 == run.pool_per_sample
    err = capsys.readouterr().err
    for layer in (0, 1):
        n = sum(s.n_features for s in run.plan if s.layer == layer)
        assert f"cuda:{layer}: recorders and one batch" in err and f"for {n} features, 1.0 TB free" in err
    free["cuda:1"] = 100_000
    with pytest.raises(ConfigError, match=r"^cuda:1: recorders and one batch .* 97.7 KB free after the model"):
        run.size_memory(quiet=True)
    monkeypatch.setattr(safety, "device_free_memory", lambda device: None)  # the CPU: the host's check alone
    run.site_device = {site: "cpu" for site in run.plan}
    run.size_memory()
    assert "recorders and one batch" not in capsys.readouterr().err

