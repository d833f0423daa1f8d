"""create_backbone: name -> frozen :class:`DenseViT` with strictly loaded weights, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from liftkit.specs import BackboneSpec, build_timm_model, get_spec
from liftkit.backbones.vit import DenseViT
from liftkit.errors import CheckpointError
from liftkit.weights.convert import convert_state_dict, load_strict, read_weights_file, state_dict_digest
from liftkit.weights.resolve import resolve_weights

RANDOM_WEIGHTS_DIGEST = "random-init"


@dataclass(frozen=True)
class BackboneInfo:
    """Provenance of a built backbone.

    Attributes:
        name: backbone name.
        weights_path: the file the weights came from ("" for ``--random_init``).
        origin: how the file was found (see :class:`ResolvedWeights`) or ``random_init``.
        weights_sha256: :func:`state_dict_digest` of the loaded weights, or ``"random-init"``.
    """

    name: str
    weights_path: str
    origin: str
    weights_sha256: str


def build_vit(spec: BackboneSpec, **overrides) -> torch.nn.Module:
    """The bare timm model of a spec (no weights loaded; timm never downloads here: ``pretrained=False``), built with
    ``dynamic_img_size=True`` so that any H, W works; ``overrides`` go to ``timm.create_model``."""
    return build_timm_model(spec.timm_arch, spec.name, **overrides)


def materialize_computed_buffers(model: torch.nn.Module, source: str) -> None:
    """After a meta-device build and an ``assign=True`` load: give the non-persistent buffers (RoPE frequencies,
    EVA's zero k-bias) real storage and let timm recompute them (``init_non_persistent_buffers``). A buffer timm
    cannot recompute is an error, never left uninitialised."""
    owners = []
    for mod_name, module in model.named_modules():
        metas = [n for n, b in module.named_buffers(recurse=False) if b is not None and b.is_meta]
        if not metas:
            continue
        if not hasattr(module, "init_non_persistent_buffers"):
            raise CheckpointError(f"weights '{source}': buffer {mod_name}.{metas[0]} is neither in the file nor "
                                  "recomputable by timm; load this model with --random_init only")
        for n in metas:
            buf = module._buffers[n]
            module._buffers[n] = torch.zeros(buf.shape, dtype=buf.dtype, device="cpu")
        owners.append(module)
    for module in owners:
        module.init_non_persistent_buffers()


def create_backbone(
    name: str,
    weights: Optional[Path] = None,
    offline: bool = False,
    random_init: bool = False,
    pretrained_dir: Optional[Path] = None,
    seed: int = 0,
    model_kwargs: Optional[Dict[str, Any]] = None,
) -> tuple:
    """Build a backbone by name, load its weights strictly, freeze it and put it in eval mode.

    Args:
        name: a key of :data:`BACKBONES` or ``timm:<timm model name>``.
        weights: explicit weight file (``--backbone_weights``).
        offline: never download.
        random_init: skip weights entirely (seeded random init, for tests); never done implicitly.
        pretrained_dir: search this folder instead of the weights directories (see liftkit.weights.locations).
        model_kwargs: extra ``timm.create_model`` arguments (tests: tiny configs).
    Returns:
        (DenseViT, BackboneInfo).
    """
    model_kwargs = dict(model_kwargs or {})
    spec = get_spec(name, model_kwargs)
    if random_init:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            vit = build_vit(spec, **model_kwargs)
        info = BackboneInfo(spec.name, "", "random_init", RANDOM_WEIGHTS_DIGEST)
    else:
        resolved = resolve_weights(spec, weights, pretrained_dir, offline)
        with torch.device("meta"):  # no random init: every tensor comes from the file
            vit = build_vit(spec, **model_kwargs)
        sd = convert_state_dict(spec, read_weights_file(resolved.path), vit)
        load_strict(vit, sd, str(resolved.path), assign=True)
        materialize_computed_buffers(vit, str(resolved.path))
        assert not any(t.is_meta for t in [*vit.parameters(), *vit.buffers()]), "weights left uninitialised"
        info = BackboneInfo(spec.name, str(resolved.path), resolved.origin, state_dict_digest(vit.state_dict()))
    model = DenseViT(spec, vit).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
