"""create_backbone: name -> frozen :class:`DenseViT` with strictly loaded weights, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import timm
import torch

from liftkit.specs import BackboneSpec, get_spec
from liftkit.backbones.vit import DenseViT
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
    """The bare timm model of a spec (no weights loaded; timm never downloads here: ``pretrained=False``)."""
    kwargs = dict(pretrained=False, num_classes=0)
    kwargs.update(overrides)
    return timm.create_model(spec.timm_arch, **kwargs)


def create_backbone(
    name: str,
    weights: Optional[Path] = None,
    offline: bool = False,
    random_init: bool = False,
    pretrained_dir: Optional[Path] = None,
    seed: int = 0,
) -> tuple:
    """Build a backbone by name, load its weights strictly, freeze it and put it in eval mode.

    Args:
        name: a key of :data:`BACKBONES`.
        weights: explicit weight file (``--backbone_weights``).
        offline: never download.
        random_init: skip weights entirely (seeded random init, for tests); never done implicitly.
        pretrained_dir: search this folder instead of the weights directories (see liftkit.weights.locations).
    Returns:
        (DenseViT, BackboneInfo).
    """
    spec = get_spec(name)
    if random_init:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            vit = build_vit(spec)
        info = BackboneInfo(spec.name, "", "random_init", RANDOM_WEIGHTS_DIGEST)
    else:
        resolved = resolve_weights(spec, weights, pretrained_dir, offline)
        sd = convert_state_dict(spec, read_weights_file(resolved.path))
        with torch.device("meta"):  # no random init: every tensor comes from the file
            vit = build_vit(spec)
        load_strict(vit, sd, str(resolved.path), assign=True)
        assert not any(t.is_meta for t in [*vit.parameters(), *vit.buffers()]), "weights left uninitialised"
        info = BackboneInfo(spec.name, str(resolved.path), resolved.origin, state_dict_digest(vit.state_dict()))
    model = DenseViT(spec, vit).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
