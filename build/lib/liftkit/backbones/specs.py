"""The backbone table lives in :mod:`liftkit.specs` (below ``weights/`` and ``backbones/``, so that neither package
imports the other's parent); this name is kept for existing imports."""

from liftkit.specs import (  # noqa: F401
    BACKBONES, DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, TIMM_PREFIX, BackboneSpec,
    attn_projection_kind, build_timm_model, check_servable, get_spec, timm_spec,
)
