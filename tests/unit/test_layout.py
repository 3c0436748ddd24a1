"""The package layout: one-way imports between stages, read from the source with ``ast``.

A package may import only the packages listed for it (and itself); ``config`` and ``errors``
import nothing else of ``indexer``; the viewer sees only the API, the store and the errors;
the store and the viewer never import torch. The rules are the README's "Architecture".
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from helpers.paths import ROOT

BASE = {"indexer.config", "indexer.errors"}
ALLOWED: dict[str, set[str]] = {
    "indexer": set(),
    "indexer.errors": set(),
    "indexer.config": {"indexer.errors"},
    "indexer.safe_regex": {"indexer.errors"},
    "indexer.pattern_score": set(),
    "indexer.store": BASE,
    "indexer.inputs": BASE,
    "indexer.recorders": BASE,
    "indexer.forward": BASE | {"indexer.inputs"},
    "indexer.run": BASE | {"indexer.forward", "indexer.recorders", "indexer.store", "indexer.inputs"},
    "indexer.analyses": BASE | {"indexer.store", "indexer.inputs", "indexer.forward", "indexer.safe_regex",
                                  "indexer.pattern_score"},
    "indexer.scaleout": BASE | {"indexer.run", "indexer.forward", "indexer.recorders", "indexer.store", "indexer.inputs"},
    "indexer.api": BASE | {"indexer.store", "indexer.safe_regex", "indexer.pattern_score"},
    "indexer.export": BASE | {"indexer.store", "indexer.api"},
    "indexer.cli": {"*"},
    "viewer": {"indexer.api", "indexer.store", "indexer.errors", "indexer.config"},
}
NO_TORCH = ("indexer.store", "indexer.api", "indexer.config", "indexer.errors", "indexer.safe_regex",
            "indexer.pattern_score", "indexer.export", "viewer")


def unit_of(module: str) -> str:
    """The layer a module belongs to: 'indexer.run.engine' -> 'indexer.run'."""
    parts = module.split(".")
    return parts[0] if parts[0] != "indexer" else ".".join(parts[:2])


def modules() -> list[tuple[str, Path]]:
    found = []
    for top in ("indexer", "viewer"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(p for p in rel.parts if p != "__init__")
            found.append((name, path))
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in a module, with its line (``TYPE_CHECKING`` blocks included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "indexer":  # `from indexer import store`
                out += [(node.lineno, f"indexer.{alias.name}") for alias in node.names]
    return out


@pytest.mark.parametrize("name,path", modules(), ids=[m for m, _ in modules()])
def test_imports_follow_the_layers(name, path):
    unit = unit_of(name)
    assert unit in ALLOWED, f"{name}: no layer rule for {unit}; add it to the README and ALLOWED"
    allowed = ALLOWED[unit]
    bad = []
    for line, target in imports(path):
        if target.split(".")[0] == "torch" and unit in NO_TORCH:
            bad.append(f"line {line}: imports torch")
        if target.split(".")[0] not in ("indexer", "viewer") or "*" in allowed:
            continue
        other = unit_of(target)
        if other != unit and other not in allowed and target not in ("indexer",):
            bad.append(f"line {line}: imports {target} ({other} is not below {unit})")
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def test_no_module_uses_another_modules_private_names():
    """``from x import _name`` and ``x._name`` across modules are refused."""
    bad = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("indexer", "viewer")):
                bad += [f"{name} imports {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


def test_every_package_is_in_the_wheel_list():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("indexer", "viewer")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found | {"neuroscope_data"} == listed


def test_every_package_states_its_layer_rule():
    for init in list((ROOT / "indexer").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Layer rule" in doc, f"{init.relative_to(ROOT)} has no 'Layer rule' in its docstring"


def test_memory_estimate_constants_match_the_recorders():
    from indexer.recorders.finebins import N_FINE
    from indexer.run import safety

    from indexer.recorders.common import SHORT_CONTEXT
    from indexer.recorders.keep_rule import pool_capacity
    from indexer.recorders.sample_windows import POOL_PER_SAMPLE

    assert (safety.N_FINE, safety.POOL_PER_SAMPLE, safety.SHORT_CONTEXT) == (N_FINE, POOL_PER_SAMPLE, SHORT_CONTEXT)
    from indexer.run.finalize import WRITE_THREADS
    from indexer.store.writer import MAX_QUEUED

    queued_files = MAX_QUEUED * WRITE_THREADS  # finalize's writer has WRITE_THREADS threads
    assert safety.QUEUED_SITES == queued_files // WRITE_THREADS + 1  # a site's examples: WRITE_THREADS part files
    assert all(safety.KEPT_PER_SAMPLE * per_bin == pool_capacity(per_bin) for per_bin in (1, 2, 5, 10))
    from indexer.recorders.common import ACCELERATOR_STEP_SCALE
    from indexer.recorders.quantiles_torch import ELEMENTS_PER_STEP

    assert safety.TORCH_STEP_ELEMENTS == ELEMENTS_PER_STEP * ACCELERATOR_STEP_SCALE


def test_memory_estimate_covers_the_recorder_state_with_windows():
    from indexer.config import IndexConfig
    from indexer.recorders import FeatureRecorders
    from indexer.run import safety

    for before, after, ctx_len in ((48, 8, 32), (200, 100, 1024), (48, 8, 1 << 15), (48, 8, 1 + (1 << 15))):
        cfg = IndexConfig(model="x", corpus=["c"], window_before=before, window_after=after)
        rec = FeatureRecorders.create(3, cfg.quantiles, cfg.top_k, cfg.per_bin, 0, "numba", window=(before, after),
                                      max_len=ctx_len)
        per_copy = safety.memory_estimate(cfg, 3, ctx_len, largest_site=0)["recorders"]  # no checkpoint copy
        assert rec.nbytes() <= per_copy <= 1.1 * rec.nbytes()


def test_window_pool_auto_grows_the_pool_only_into_spare_memory():
    """--window-pool auto: 6 entries per sample where the whole estimate at 6 stays under half
    the memory available, 2.7 where even that one does not, a tenth-rounded value between
    them otherwise, 2.7 on an accelerator or where the memory is unknown; a number is kept;
    the estimate and the recorders agree on the bytes of the chosen pool."""
    from indexer.config import IndexConfig
    from indexer.recorders import FeatureRecorders
    from indexer.run import safety

    cfg = IndexConfig(model="x", corpus=["c"])
    shape = dict(n_features=37_440, ctx_len=1024, largest_site=3072, model_bytes=500 << 20, heads=12)
    at = {p: safety.memory_estimate(cfg, pool=p, **shape)["total"] for p in (2.7, 6.0)}
    assert safety.choose_pool(cfg, 2 * at[6.0], **shape) == 6.0
    assert safety.choose_pool(cfg, 2 * at[2.7], **shape) == 2.7
    between = safety.choose_pool(cfg, at[2.7] + at[6.0], **shape)
    assert 2.7 < between < 6.0 and round(between, 1) == between
    assert safety.memory_estimate(cfg, pool=between, **shape)["total"] <= (at[2.7] + at[6.0]) / 2
    assert safety.choose_pool(cfg, 100 * at[6.0], on_cpu=False, **shape) == 2.7
    assert safety.choose_pool(cfg, None, **shape) == 2.7
    fixed = IndexConfig(model="x", corpus=["c"], window_pool="4")
    assert safety.choose_pool(fixed, 100 * at[6.0], **shape) == 4.0
    for pool in (0.0, 6.0):
        rec = FeatureRecorders.create(3, cfg.quantiles, cfg.top_k, cfg.per_bin, 0, "numba", window=(48, 8),
                                      max_len=1024, pool_per_sample=pool)
        est = safety.memory_estimate(cfg, 3, 1024, largest_site=0, pool=pool)
        assert rec.nbytes() <= est["recorders"] <= 1.1 * rec.nbytes()


def test_window_pool_auto_on_accelerators_grows_into_each_devices_free_memory():
    """On accelerators auto sizes the pool from each device's own need (its recorders and one
    batch of its widest site) against what the model left free there: the largest tenth whose
    need stays under half of every device's free bytes; check_memory refuses, in one line
    naming the device, a need past its free bytes, and prints each device's figures."""
    import pytest

    from indexer.config import IndexConfig
    from indexer.errors import ConfigError
    from indexer.run import safety

    cfg = IndexConfig(model="x", corpus=["c"])
    mlp, heads = dict(n_features=6 * 3072, largest_site=3072), dict(n_features=3072 + 6 * 12, largest_site=3072, heads=12)
    need = {p: {name: safety.device_need(cfg, 1024, pool=p, **sites) for name, sites in (("mlp", mlp), ("heads", heads))}
            for p in (2.7, 4.0, 6.0)}
    assert need[2.7]["mlp"] < need[4.0]["mlp"] < need[6.0]["mlp"] and need[6.0]["heads"] > need[6.0]["mlp"] / 6
    shape = dict(n_features=mlp["n_features"] + heads["n_features"], ctx_len=1024, largest_site=3072, heads=12)

    def devices(free0, free1):
        return {"cuda:0": (free0, mlp), "cuda:1": (free1, heads)}

    roomy = devices(2 * need[6.0]["mlp"], 2 * need[6.0]["heads"])
    assert safety.choose_pool(cfg, None, on_cpu=False, devices=roomy, **shape) == 6.0
    # the tighter device decides: room for 4.0 on cuda:1, for 6 on cuda:0
    tight = devices(2 * need[6.0]["mlp"], 2 * need[4.0]["heads"])
    chosen = safety.choose_pool(cfg, None, on_cpu=False, devices=tight, **shape)
    assert 4.0 <= chosen < 6.0 and round(chosen, 1) == chosen
    assert safety.device_need(cfg, 1024, pool=chosen, **heads) <= need[4.0]["heads"] < \
        safety.device_need(cfg, 1024, pool=chosen + 0.1, **heads)
    assert safety.choose_pool(cfg, None, on_cpu=False, devices=devices(need[2.7]["mlp"], 1 << 40), **shape) == 2.7
    fixed = IndexConfig(model="x", corpus=["c"], window_pool="3")
    assert safety.choose_pool(fixed, None, on_cpu=False, devices=roomy, **shape) == 3.0

    est = safety.check_memory(cfg, available=1 << 50, on_cpu=False, devices=roomy, **shape)
    assert est["pool_per_sample"] == 6.0
    with pytest.raises(ConfigError, match=r"^cuda:1: recorders and one batch .* free after the model: lower") as e:
        safety.check_memory(cfg, available=1 << 50, on_cpu=False, quiet=True,
                            devices=devices(1 << 40, need[2.7]["heads"] - 1), **shape)
    assert "\n" not in str(e.value)
    large = IndexConfig(model="x", corpus=["c"], allow_large=True)
    assert safety.check_memory(large, available=1 << 50, on_cpu=False, quiet=True,
                               devices=devices(1 << 40, need[2.7]["heads"] - 1), **shape)["pool_per_sample"] == 2.7

