#!/usr/bin/env python
"""DAVIS-2017 semi-supervised video object segmentation by label propagation, scored with J&F.

    python eval_davis.py --data_root ../shared/data/DAVIS --methods low,bilinear,lift --output_dir runs/davis

A thin entry point kept for the paper's layout; the command is :mod:`liftkit.cli.eval_davis`
(``liftkit-eval-davis`` once the package is installed). ``--help`` lists every flag.
"""

from liftkit.cli.eval_davis import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
