"""extractor.py: re-exports :mod:`liftkit.extractor`, the one module that loads ViT backbones and their dense facets.

``from extractor import ViTExtractor`` keeps working from a checkout (``from liftkit import ViTExtractor`` once
installed). The shape notation (B, T, C, p, H, W, h, w), the facets, the size policy and an example are defined once,
in ``liftkit/extractor.py``'s docstring, which is appended to this one below.
"""

from liftkit.extractor import (  # noqa: F401
    DTYPES, METHODS, Method, ViTExtractor, available_backbones, parse_method, parse_methods, shipped_lift_path,
)

import liftkit.extractor as _impl  # noqa: E402

__doc__ = f"{__doc__}\n{_impl.__doc__}"
