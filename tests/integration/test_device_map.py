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
