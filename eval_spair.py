#!/usr/bin/env python
"""SPair-71k keypoint correspondence (PCK) of dense ViT features, several upsampling methods in one run.

    python eval_spair.py --data_root ../shared/data/SPair-71k --methods low,bilinear,highres,lift,lift2

A thin entry point kept for the paper's layout; the command is :mod:`liftkit.cli.eval_spair`
(``liftkit-eval-spair`` once the package is installed). ``--help`` lists every flag.
"""

from liftkit.cli.eval_spair import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
