"""LiFT checkpoints: self-describing safetensors files, official ``.pth`` files, and the compatibility check.

Our files are safetensors whose string metadata (:class:`LiftMeta`) records what the module was trained for:
backbone name and weights digest, layer, facet, channel order, patch size, channels, input normalisation and the
training config. The official release's ``lift_*.pth`` files (a plain state dict, maybe with a ``module.`` prefix)
are read with ``weights_only=True``; their backbone is taken from the file name (``lift_dino_vits16.pth``...), and
the official training setup (last layer, ``key`` facet, dim-major channels, ImageNet normalisation) is assumed.

A LiFT applied to a backbone, layer, facet, channel order or channel count other than its own is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from liftkit.backbones.specs import BACKBONES
from liftkit.errors import CheckpointError, IncompatibleLiftError, unreadable_file_message
from liftkit.lift.model import ARCHS, HEADS, LiFT
from liftkit.weights.convert import load_strict

FORMAT = "liftkit.lift/1"
UNKNOWN = "unknown"
_LIFT_TODO = "re-download or re-train it, or pass another --lift_path (none: no LiFT)"


@dataclass
class LiftMeta:
    """What a LiFT module was trained for (all stored as strings in the safetensors header).

    ``layer`` is the resolved, non-negative block index. ``backbone_weights_sha256`` is the backbone's
    :func:`state_dict_digest` (``unknown`` for official files, whose training weights we cannot hash).
    """

    backbone: str
    backbone_weights_sha256: str
    layer: int
    facet: str
    channel_order: str
    patch_size: int
    channels: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    train_config: Dict[str, Any] = field(default_factory=dict)
    source: str = "liftkit"
    residual: bool = False  # kept for readers of older files; equals head == "residual"
    head: str = "plain"  # plain | residual | attend (liftkit.lift.model.HEADS)
    head_kernel: int = 3  # attend head: neighbourhood k
    head_prior: str = "bilinear"  # attend head: prior of the logits
    arch: str = "lift"  # lift | lift_noimage | resize_conv (liftkit.lift.model.ARCHS)

    def __post_init__(self) -> None:
        if self.residual and self.head == "plain":
            self.head = "residual"
        self.residual = self.head == "residual"

    def build(self) -> LiFT:
        """An untrained :class:`LiFT` with this file's architecture."""
        return LiFT(self.channels, self.patch_size, head=self.head, kernel=self.head_kernel, prior=self.head_prior,
                    arch=self.arch)

    def to_strings(self) -> Dict[str, str]:
        d = asdict(self)
        out = {"format": FORMAT}
        for k, v in d.items():
            out[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple, bool)) else str(v)
        return out

    @classmethod
    def from_strings(cls, d: Dict[str, str], path: Path) -> "LiftMeta":
        if d.get("format") != FORMAT:
            raise CheckpointError(f"LiFT file '{path}' has no liftkit metadata (format={d.get('format')!r}); "
                                  "was it written by train_lift.py?")
        head = d.get("head", "residual" if d.get("residual") == "true" else "plain")
        if head not in HEADS:
            raise CheckpointError(f"LiFT file '{path}' has head '{head}', which this liftkit does not know (known: "
                                  f"{', '.join(HEADS)}); upgrade liftkit or use another LiFT file")
        arch = d.get("arch", "lift")
        if arch not in ARCHS:
            raise CheckpointError(f"LiFT file '{path}' has arch '{arch}', which this liftkit does not know (known: "
                                  f"{', '.join(ARCHS)}); upgrade liftkit or use another LiFT file")
        try:
            return cls(
                arch=arch, head=head, head_kernel=int(d.get("head_kernel", "3")), head_prior=d.get("head_prior", "bilinear"),
                backbone=d["backbone"], backbone_weights_sha256=d["backbone_weights_sha256"], layer=int(d["layer"]),
                facet=d["facet"], channel_order=d["channel_order"], patch_size=int(d["patch_size"]),
                channels=int(d["channels"]), mean=tuple(json.loads(d["mean"])), std=tuple(json.loads(d["std"])),
                train_config=json.loads(d.get("train_config", "{}")), source=d.get("source", "liftkit"),
                residual=json.loads(d.get("residual", "false")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"LiFT file '{path}' has incomplete metadata ({exc}); re-save it with train_lift.py") from None


def save_lift(path: Path, model: LiFT, meta: LiftMeta) -> Path:
    """Write ``model`` and ``meta`` to a safetensors file atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata=meta.to_strings())
    os.replace(tmp, path)
    return path


def random_lift(meta: LiftMeta, seed: int = 0) -> LiFT:
    """An untrained LiFT of ``meta``'s architecture with seeded random weights (the paper's "random LiFT" floor),
    in eval mode (BatchNorm with its initial statistics)."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        model = meta.build()
        if meta.head != "plain":  # the other heads start at zero: give their output layer random weights too
            torch.nn.init.kaiming_uniform_(model.outc.weight, a=5 ** 0.5)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


def official_backbone_from_name(path: Path) -> Optional[str]:
    """Backbone of an official LiFT file from its name (``lift_dino_vits16.pth`` -> ``dino_vits16``), or None."""
    stem = Path(path).stem
    for name in sorted(BACKBONES, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(name)}($|[^a-z0-9])", stem):
            return name
    return None


def _strip_module(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_lift(path: Path, map_location: str = "cpu", backbone: Optional[str] = None) -> Tuple[LiFT, LiftMeta]:
    """Load a LiFT file (ours: ``.safetensors``; official: ``.pth``) strictly.

    Args:
        backbone: the backbone the user named (``--model_type``): an official ``.pth`` whose name does not say its
            backbone is taken to be for this one (its channel count and parameter shapes are still checked against
            it, and ``meta.source`` reads ``official (backbone from --model_type)``).

    Returns:
        (LiFT in eval mode, LiftMeta).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--lift_path '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = f.metadata() or {}
            sd = load_file(str(path), device=map_location)
        except Exception as exc:
            raise CheckpointError(unreadable_file_message("LiFT file", path, exc, _LIFT_TODO)) from None
        meta = LiftMeta.from_strings(raw_meta, path)
    else:
        try:
            sd = torch.load(str(path), map_location=map_location, weights_only=True)
        except Exception as exc:
            raise CheckpointError(unreadable_file_message("LiFT file", path, exc, _LIFT_TODO)) from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or "outc.weight" not in _strip_module(sd):
            raise CheckpointError(f"'{path}' is not a LiFT state dict (no 'outc.weight')")
        sd = _strip_module(sd)
        source = "official"
        named = official_backbone_from_name(path)
        if named is None and backbone in BACKBONES:
            source = "official (backbone from --model_type)"
        backbone = named or backbone
        if backbone not in BACKBONES:
            raise CheckpointError(
                f"cannot tell which backbone the official LiFT file '{path}' was trained for; name it "
                f"lift_<backbone>.pth (e.g. lift_dino_vits16.pth) or give --model_type"
            )
        spec = BACKBONES[backbone]
        meta = LiftMeta(
            backbone=backbone, backbone_weights_sha256=UNKNOWN, layer=spec.depth - 1, facet="key",
            channel_order="dim_major", patch_size=spec.patch_size, channels=int(sd["outc.weight"].shape[0]),
            mean=spec.mean, std=spec.std, source=source,
        )
    try:
        model = meta.build()
    except ValueError as exc:
        raise CheckpointError(f"LiFT file '{path}': {exc}") from None
    load_strict(model, sd, str(path))
    return model.eval(), meta


def check_compatible(
    meta: LiftMeta,
    backbone: str,
    weights_sha256: str,
    layer: int,
    facet: str,
    channel_order: str,
    channels: int,
    lift_path: str = "",
) -> None:
    """Refuse (IncompatibleLiftError, one line) a LiFT applied to anything other than what it was trained for."""
    where = f"LiFT '{lift_path}'" if lift_path else "this LiFT"
    checks = [
        ("backbone", meta.backbone, backbone, "--model_type"),
        ("layer", meta.layer, layer, "--layer"),
        ("facet", meta.facet, facet, "--facet"),
        ("channel order", meta.channel_order, channel_order, "--channel_order"),
        ("channel count", meta.channels, channels, "--model_type"),
    ]
    for what, trained, given, flag in checks:
        if trained != given:
            raise IncompatibleLiftError(
                f"{where} was trained for {what} {trained!r} but is applied to {given!r}; "
                f"pass {flag} {trained} or a LiFT trained for {given!r} (or --no_lift)"
            )
    if meta.backbone_weights_sha256 not in (UNKNOWN, weights_sha256):
        raise IncompatibleLiftError(
            f"{where} was trained on {backbone} weights with sha256 {meta.backbone_weights_sha256[:12]}... but the "
            f"loaded weights have {weights_sha256[:12]}...; use the weights it was trained on or retrain it"
        )
