"""SAE specs (``--sae [NAME=]PATH``) and loading: a folder in SAELens or sparsify format, or an
embedded SAE under ``data/saes/NAME``, read without SAELens (which does not import beside
TransformerLens 4.x) into an ``Sae``: its config, its tensors on a device, and a hash of its
weights file for the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.errors import SaeError, one_line
from indexer.inputs.data import data_dir
from indexer.inputs.sae_formats import (
    CONFIG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, SaeConfig, saelens_config, saelens_tensors, sparsify_config,
    sparsify_latents, sparsify_tensors,
)

SITE_PREFIX = "sae:"
SCALER = "activation_scaler.json"  # SAELens: {"scaling_factor": s} for expected_average_only_in
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class SaeSpec:
    """One ``--sae`` option: the site is ``sae:NAME``."""

    name: str
    path: Path

    @property
    def site(self) -> str:
        return SITE_PREFIX + self.name


@dataclass
class Sae:
    """An SAE or transcoder read from disk.

    Attributes:
        spec: the option it came from.
        cfg: its description (``SaeConfig``).
        tensors: name -> tensor, SAELens layout (W_enc [d_in, d_sae], W_dec [d_sae, d_out]),
            float32 on the device it was loaded to.
        input_scale: multiplies the input first (expected_average_only_in), else None.
        sha256: of the weights file.
    """

    spec: SaeSpec
    cfg: SaeConfig
    tensors: dict[str, Any]
    input_scale: float | None
    sha256: str

    def manifest_entry(self) -> dict[str, Any]:
        """What the manifest records of this SAE."""
        c = self.cfg
        return {"name": self.spec.name, "site": self.spec.site, "path": str(self.spec.path), "format": c.format,
                "architecture": c.architecture, "hook": c.hook, "hook_out": c.hook_out, "d_in": c.d_in,
                "d_sae": c.d_sae, "d_out": c.d_out, "k": c.k, "transcoder": c.transcoder,
                "apply_b_dec_to_input": c.apply_b_dec_to_input, "normalize_activations": c.normalize_activations,
                "input_scale": self.input_scale, "sha256": self.sha256}


def saes_dir() -> Path:
    return data_dir() / "saes"


def embedded_saes() -> list[str]:
    folder = saes_dir()
    return sorted(p.name for p in folder.iterdir() if (p / CONFIG).is_file()) if folder.is_dir() else []


def parse_sae_spec(text: str) -> SaeSpec:
    """'[NAME=]PATH' -> SaeSpec; NAME defaults to the folder's name.

    >>> parse_sae_spec("res0=/tmp/x").site, parse_sae_spec("/a/b/blocks.0.hook_mlp_out").name
    ('sae:res0', 'blocks.0.hook_mlp_out')
    """
    name, sep, path = str(text).partition("=")
    if not sep or "/" in name or not name:
        name, path = "", str(text)
    folder = Path(path).expanduser()
    if not folder.is_dir() and "/" not in path and (saes_dir() / path / CONFIG).is_file():
        folder = saes_dir() / path
    name = name or folder.name
    if not _NAME.match(name):
        raise SaeError(f"--sae {text!r}: name {name!r} may hold only letters, digits and _.+- (give NAME=PATH)")
    return SaeSpec(name=name, path=folder)


def load_sae(spec: SaeSpec, device: str = "cpu") -> Sae:
    """Read an SAE folder; SaeError in one line for anything that does not fit."""
    folder = spec.path
    where = f"--sae {spec.name}={folder}"
    if not folder.is_dir():
        known = ", ".join(embedded_saes()) or "none"
        raise SaeError(f"{where}: no such folder (embedded SAEs: {known})")
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise SaeError(f"{where}: no {CONFIG} (expected SAELens {CONFIG} + {SAELENS_WEIGHTS} or sparsify {CONFIG} + {SPARSIFY_WEIGHTS})")
    try:
        raw_cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise SaeError(f"{where}: cannot read {CONFIG} ({one_line(e)})") from None
    if not isinstance(raw_cfg, dict):
        raise SaeError(f"{where}: {CONFIG} is not a JSON object")
    if (folder / SAELENS_WEIGHTS).is_file():
        weights = folder / SAELENS_WEIGHTS
        cfg = saelens_config(raw_cfg, where)
        tensors = saelens_tensors(_read_weights(weights, where), cfg, where)
    elif (folder / SPARSIFY_WEIGHTS).is_file():
        weights = folder / SPARSIFY_WEIGHTS
        raw = _read_weights(weights, where)
        hookpoint = str(raw_cfg.get("hookpoint") or folder.name)
        cfg = sparsify_config(raw_cfg, hookpoint, sparsify_latents(raw, raw_cfg, where), where)
        tensors = sparsify_tensors(raw, cfg, where)
    else:
        raise SaeError(f"{where}: no {SAELENS_WEIGHTS} (SAELens) or {SPARSIFY_WEIGHTS} (sparsify) next to {CONFIG}")
    scale = _input_scale(folder, cfg, where)
    return Sae(spec=spec, cfg=cfg, tensors={k: v.float().to(device) for k, v in tensors.items()},
               input_scale=scale, sha256=file_sha256(weights))


def sae_width(spec: SaeSpec) -> int:
    """d_sae of an SAE folder from its config (and a sparsify file's header), without loading
    its weights: what ``index --dry-run`` counts. SaeError in one line if the folder is unusable."""
    folder, where = spec.path, f"--sae {spec.name}={spec.path}"
    try:
        raw_cfg = json.loads((folder / CONFIG).read_text())
        if (folder / SAELENS_WEIGHTS).is_file():
            return saelens_config(raw_cfg, where).d_sae
        if int(raw_cfg.get("num_latents") or 0):
            return int(raw_cfg["num_latents"])
        from safetensors import safe_open

        with safe_open(str(folder / SPARSIFY_WEIGHTS), "pt") as f:
            return int(f.get_slice("encoder.weight").get_shape()[0])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SaeError(f"{where}: cannot read its config and weights' header ({one_line(e)})") from None


def _read_weights(path: Path, where: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise SaeError(f"{where}: cannot read {path.name} ({one_line(e)})") from None


def _input_scale(folder: Path, cfg: SaeConfig, where: str) -> float | None:
    if cfg.normalize_activations != "expected_average_only_in":
        return None
    try:
        return float(json.loads((folder / SCALER).read_text())["scaling_factor"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SaeError(f"{where}: normalize_activations is expected_average_only_in but there is no {SCALER} "
                       "with its scaling_factor (SAELens folds it only when loading from its registry)") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
