#!/usr/bin/env python
"""One benchmark for any upsampler: every quality probe (reconstruction, warp PCK, boundary F, SPair, DAVIS,
TokenCut), for a list of methods and LiFT files side by side.

    python eval_upsampler.py --offline --output_dir runs/upsampler        # see --help for every flag

A thin entry point kept for the checkout's layout (``--imsize`` still works, as ``--load_size``); the command is
:mod:`liftkit.cli.eval_upsampler` (``liftkit-eval-upsampler`` once installed). docs/upsampler.md describes the probes.
"""

from liftkit.cli.eval_upsampler import build_parser, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
