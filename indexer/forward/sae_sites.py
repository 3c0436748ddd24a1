"""SAE sites: each ``--sae`` becomes a site ``sae:NAME`` whose features are its latents, read
from the hook its config names, mapped onto the bridge.

Hook names: a SAELens config names a TransformerLens hook (``blocks.3.hook_resid_pre``,
``blocks.0.hook_mlp_out``, ``blocks.0.mlp.hook_post``...); TransformerLens 4.x's bridge
answers to those legacy names as aliases (``hook_resid_pre`` -> ``blocks.L.hook_in``,
``hook_mlp_out`` -> ``blocks.L.mlp.hook_out``). A sparsify hookpoint is an HF module name:
an SAE reads the module's output, a transcoder its input (``layers.3`` -> hook_resid_post /
hook_resid_pre, ``layers.3.mlp`` -> hook_mlp_out / mlp.hook_in, ``layers.3.self_attn`` ->
hook_attn_out / attn.hook_in).

Before any indexing, one probe pass over two BOS tokens checks that every SAE's hook exists,
fires, and carries d_in values, and gives the order sites fire in, so the plan (whose last
site stops the forward pass) stays in firing order.
"""

from __future__ import annotations

import re
from typing import Any

from indexer.errors import SaeError, one_line
from indexer.forward.sae_encode import SaeEncoder
from indexer.forward.sites import Site
from indexer.inputs.models import LoadedModel
from indexer.inputs.sae import SITE_PREFIX, Sae, SaeSpec, load_sae

_HF_MODULE = re.compile(r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h|blocks)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$")
# (module kind, transcoder?) -> TransformerLens hook in block L
_SPARSIFY_HOOKS = {
    (None, False): "hook_resid_post", (None, True): "hook_resid_pre",
    ("mlp", False): "hook_mlp_out", ("mlp", True): "mlp.hook_in",
    ("attn", False): "hook_attn_out", ("attn", True): "attn.hook_in",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def is_sae_site(name: str) -> bool:
    return name.startswith(SITE_PREFIX)


def tl_hook(sae: Sae) -> str:
    """The TransformerLens name of the hook an SAE reads."""
    hook = sae.cfg.hook
    if sae.cfg.format != "sparsify" or _BLOCK.match(hook):
        return hook
    found = _HF_MODULE.match(hook)
    if found is None:
        raise SaeError(f"--sae {sae.spec.name}: sparsify hookpoint {hook!r} (the folder name) is not a block or "
                       "its mlp/attention module (layers.N, layers.N.mlp, layers.N.self_attn)")
    kind = {"self_attn": "attn", "attention": "attn"}.get(found.group(2), found.group(2))
    return f"blocks.{found.group(1)}.{_SPARSIFY_HOOKS[(kind, sae.cfg.transcoder)]}"


def written_hook(sae: Sae) -> str | None:
    """The TransformerLens name of what the decoder reconstructs: an SAE's own hook, a
    transcoder's output hook (None when its config does not name it)."""
    if not sae.cfg.transcoder:
        return tl_hook(sae)
    found = _HF_MODULE.match(sae.cfg.hook) if sae.cfg.format == "sparsify" else None
    if found is not None:
        kind = {"self_attn": "attn", "attention": "attn"}.get(found.group(2), found.group(2))
        return f"blocks.{found.group(1)}.{_SPARSIFY_HOOKS[(kind, False)]}"
    return sae.cfg.hook_out


def bridge_hook(bridge: Any, hook: str, name: str) -> str:
    """``hook`` as the bridge knows it (a hook point name or one of its aliases)."""
    if hook in bridge.hook_dict:
        return hook
    for alias, targets in (getattr(bridge, "hook_aliases", None) or {}).items():
        for target in [targets] if isinstance(targets, str) else targets:
            if hook == alias and target in bridge.hook_dict:
                return target
    near = sorted(h for h in bridge.hook_dict if h.startswith(hook.rsplit(".", 1)[0] + "."))[:8]
    raise SaeError(f"--sae {name}: the model has no hook {hook!r}" + (f" (near it: {', '.join(near)})" if near else ""))


def sae_site(model: LoadedModel, sae: Sae) -> Site:
    """The site of one loaded SAE on ``model`` (its hook checked by name, not yet by shape)."""
    hook = bridge_hook(model.bridge, tl_hook(sae), sae.spec.name)
    found = _BLOCK.match(hook)
    if found is None:
        raise SaeError(f"--sae {sae.spec.name}: hook {hook!r} is not inside a block (blocks.L.*); "
                       "neuroscope indexes SAEs on block hooks")
    layer = int(found.group(1))
    if layer >= model.info.n_layers:
        raise SaeError(f"--sae {sae.spec.name}: hook {hook!r} but {model.info.name} has layers 0..{model.info.n_layers - 1}")
    return Site(sae.spec.site, layer, sae.cfg.d_sae, hook=hook, encoder=SaeEncoder(sae, hook))


def plan_with_saes(model: LoadedModel, plan: list[Site], saes: list[Sae]) -> list[Site]:
    """``plan`` plus a site per SAE, in firing order; SaeError (one line) for an SAE whose hook
    is missing or does not carry d_in values. Runs one forward pass over two tokens."""
    if not saes:
        return plan
    names = [s.spec.site for s in saes]
    if len(set(names)) != len(names):
        raise SaeError(f"two --sae share a name ({', '.join(names)}); label them NAME=PATH")
    full = plan + [sae_site(model, sae) for sae in saes]
    fired = _probe(model, full)
    for site in full[len(plan):]:
        got = fired.get(site.key)
        if got is None:
            raise SaeError(f"--sae {site.name[len(SITE_PREFIX):]}: hook {site.hook} did not fire in a forward pass")
        width = got[1][-1] * (got[1][-2] if len(got[1]) == 4 else 1)
        if width != site.encoder.cfg.d_in:
            raise SaeError(f"--sae {site.name[len(SITE_PREFIX):]}: hook {site.hook} carries {width} values per token "
                           f"but the SAE's d_in is {site.encoder.cfg.d_in}")
    return sorted(full, key=lambda s: fired.get(s.key, (float("inf"),))[0])


def _probe(model: LoadedModel, plan: list[Site]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """site key -> (when its last hook fired, the shape it carried) in one forward pass."""
    import torch

    fired: dict[str, tuple[int, tuple[int, ...]]] = {}
    count = [0]

    def watch(site: Site):
        def hook(tensor: Any, hook: Any) -> None:
            count[0] += 1
            fired[site.key] = (count[0], tuple(tensor.shape))

        return hook

    hooks = [(name, watch(site)) for site in plan for name in site.hook_names()]
    bos = model.info.bos_token_id
    device = str(next(model.bridge.parameters()).device)
    try:
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
            model.bridge(torch.tensor([[bos, bos]], device=device))
    except ValueError as e:  # the bridge refuses a hook it has but must switch on first
        raise SaeError(f"--sae: a hook cannot be used on this model ({one_line(e)})") from None
    return fired


def load_saes(specs: list[SaeSpec], device: str) -> list[Sae]:
    return [load_sae(spec, device) for spec in specs]


def sites_from_manifest(model: LoadedModel, manifest: dict[str, Any]) -> dict[str, Site]:
    """site name -> Site (with its encoder) for every SAE an index was made with; the weights
    must be those the index was made with (same hash)."""
    from indexer.inputs.sae import parse_sae_spec

    device = str(next(model.bridge.parameters()).device)
    out = {}
    for entry in manifest.get("saes", []) or []:
        sae = load_sae(parse_sae_spec(f"{entry['name']}={entry['path']}"), device)
        if sae.sha256 != entry.get("sha256"):
            raise SaeError(f"--sae {entry['name']}: {entry['path']} is not the SAE the index was made with "
                           "(its weights' hash differs)")
        out[sae.spec.site] = sae_site(model, sae)
    return out
