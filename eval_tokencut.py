#!/usr/bin/env python
"""TokenCut single-object discovery on dense ViT / LiFT features, scored by CorLoc (VOC07/12, COCO20k, COCO, folder).

    python eval_tokencut.py --dataset voc07 --data_root ../shared/data/VOC2007/VOCdevkit/VOC2007 --methods low,lift

A thin entry point kept for the paper's layout (``--dataroot`` still works); the command is
:mod:`liftkit.cli.eval_tokencut` (``liftkit-eval-tokencut`` once installed). ``--help`` lists every flag.
"""

from liftkit.cli.eval_tokencut import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
