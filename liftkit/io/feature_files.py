"""Feature files written by lift_extractor.py: one file per image, three formats, same content.

Content:
    features: float tensor of shape (C, h', w') (layout ``CHW``), the dense features of one image
        (h', w') = (h, w) for ``--no_lift``, (2^k h, 2^k w) with LiFT (k = ``--lift_iter``) or ``--upsample``.
    metadata: a flat ``{str: str}`` dict: image, image_size (``WxH`` of the upright original), input_size (``HxW``
        fed to the backbone), grid_low (``hxw``), grid (``h'xw'``), layout, method, lift_iter, backbone,
        backbone_weights, backbone_weights_sha256, layer, facet, channel_order, patch_size, channels, lift_path,
        lift_sha256, dtype, liftkit_version.
Formats:
    ``pt``: ``torch.save({"features": Tensor, "metadata": dict})`` (loads with ``torch.load(f, weights_only=True)``);
    ``safetensors``: tensor ``features`` plus the metadata in the header;
    ``npy``: the array, plus the metadata as JSON in ``<file>.json`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

from liftkit.io.outputs import atomic_write

FORMATS = ("pt", "npy", "safetensors", "official")
SUFFIX = {"official": "pth"}  # file extension of a format, when it is not the format's name


def save_features(path: Path, features: torch.Tensor, metadata: Dict[str, str], fmt: str) -> Path:
    """Write (C, h, w) ``features`` and ``metadata`` to ``path`` in ``fmt``, atomically (a short temporary name in
    the same folder, renamed into place; nothing partial is left on any error). Returns the path.

    Raises:
        OutputError: the path cannot be written (a folder, under a file, name too long, no space, read-only...):
            one line naming the path, the reason and what to do.
    """
    assert features.dim() == 3, f"expected (C, h, w), got {tuple(features.shape)}"
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt}")
    path = Path(path)
    meta = {str(k): str(v) for k, v in metadata.items()}
    t = features.detach().cpu().contiguous()
    if fmt == "npy":
        sidecar = Path(str(path) + ".json")
        with atomic_write(path) as tmp:  # both written to temporary names; the sidecar renamed just before the array
            with open(tmp, "wb") as f:
                np.save(f, t.numpy())
            with atomic_write(sidecar) as tmp_json:
                tmp_json.write_text(json.dumps(meta, indent=1, sort_keys=True))
        return path
    with atomic_write(path) as tmp:
        if fmt == "pt":
            torch.save({"features": t, "metadata": meta}, tmp)
        elif fmt == "official":  # exactly what the official lift_extractor.py writes: a [1, T', C] tensor
            torch.save(t.flatten(1).t().unsqueeze(0).contiguous(), tmp)
        else:
            from safetensors.torch import save_file

            save_file({"features": t}, str(tmp), metadata=meta)
    return path


def load_features(path: Path) -> Tuple[torch.Tensor, Dict[str, str]]:
    """Read a file written by :func:`save_features`: ((C, h, w) tensor, metadata)."""
    path = Path(path)
    if path.suffix == ".pt":
        d = torch.load(path, map_location="cpu", weights_only=True)
        return d["features"], d["metadata"]
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("features"), dict(f.metadata() or {})
    if path.suffix == ".npy":
        meta_path = Path(str(path) + ".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return torch.from_numpy(np.load(path)), meta
    raise ValueError(f"unknown feature file type: {path}")
