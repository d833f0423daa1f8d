#!/usr/bin/env python
"""Look at what LiFT does: self-similarity maps, PCA pictures, CKA scale invariance, and the PCK-vs-FLOPs curve.

    python eval_visualize_feats.py --image_path assets/ --lift_iter 2          # -> output/vis/

A thin entry point kept for the paper's layout; the command is :mod:`liftkit.cli.visualize` (``liftkit-visualize``
once the package is installed). ``--help`` lists every flag.
"""

from liftkit.cli.visualize import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
