#!/usr/bin/env python
"""Extract dense ViT features (with LiFT by default) for one image, a folder or a glob.

    python lift_extractor.py --image_path photo.jpg --output_path photo.pt     # see --help for every flag

A thin entry point kept for the paper's layout; the command is :mod:`liftkit.cli.extract` (``liftkit-extract`` once
the package is installed).
"""

from liftkit.cli.extract import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
