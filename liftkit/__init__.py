"""liftkit: dense Vision-Transformer features and LiFT (ECCV 2024), re-implemented.

The package is the library; the top-level scripts (``lift_extractor.py``, ``train_lift.py``, ...) are thin command
lines over it, and ``extractor.py`` is the one facade that loads backbones and their facets.
"""

__version__ = "0.1.0"
