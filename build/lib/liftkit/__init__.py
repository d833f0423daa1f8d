"""liftkit: dense Vision-Transformer features and LiFT (ECCV 2024), re-implemented.

    from liftkit import ViTExtractor, LiFT, load_lift
    ext = ViTExtractor()                              # offline DINOv2 ViT-S/14 + the shipped LiFT
    feats = ext.features(x, "low,bilinear,lift")      # every method from one backbone pass

The package is the library plus its command-line layer (:mod:`liftkit.cli`, the ``liftkit-*`` console scripts and
the top-level scripts of a checkout). :mod:`liftkit.extractor` is the one facade that loads backbones and their
facets. The names below are imported on first use, so ``import liftkit.errors`` stays light.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ViTExtractor": "liftkit.extractor",
    "available_backbones": "liftkit.extractor",
    "LiFT": "liftkit.lift.model",
    "load_lift": "liftkit.lift.checkpoint",
    "save_lift": "liftkit.lift.checkpoint",
    "LiftMeta": "liftkit.lift.checkpoint",
    "Method": "liftkit.methods",
    "parse_methods": "liftkit.methods",
    "LiftKitError": "liftkit.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'liftkit' has no attribute '{name}'")
