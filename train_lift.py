#!/usr/bin/env python
"""Train a LiFT module for any backbone on any folder of images (resumable, multi-GPU).

    python train_lift.py --data_root /data/imagenet-sample-images --cache_dir .cache/lift_targets --epochs 20
    torchrun --nproc_per_node 4 train_lift.py --data_root /data/imagenet/train --batch_size 256 --amp bf16

A thin entry point kept for the paper's layout; the command is :mod:`liftkit.cli.train` (``liftkit-train`` once the
package is installed). ``--help`` lists every flag; docs/training.md explains them.
"""

from liftkit.cli.train import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
