"""Where the toolkit looks for weight files on disk (never by walking up from the installed library).

Weights directories, in order:
  1. ``$LIFTKIT_WEIGHTS_DIR``: one folder or several separated by ``os.pathsep`` (``:`` on Linux);
  2. ``pretrained/`` in the working directory (the repository root when run from a checkout, as the README does).
Backbone weight files (``<official file name>``, ``<model_type>.pth|.safetensors``) are looked for there first (see
:mod:`liftkit.weights.resolve`); a LiFT file ``lift_<model_type>.safetensors`` there overrides the one shipped as
package data in :mod:`liftkit.pretrained`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import List, Optional

WEIGHTS_DIR_ENV = "LIFTKIT_WEIGHTS_DIR"


def weights_dirs() -> List[Path]:
    """The weights directories, in search order (they need not exist)."""
    env = [Path(p) for p in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if p]
    return env + [Path("pretrained")]


def packaged_lift_path(model_type: str) -> Optional[Path]:
    """``lift_<model_type>.safetensors`` shipped inside the installed package, if there is one."""
    ref = resources.files("liftkit.pretrained") / f"lift_{model_type}.safetensors"
    return Path(str(ref)) if ref.is_file() else None


def shipped_lift_path(model_type: str, pretrained_dir: Optional[Path] = None) -> Optional[Path]:
    """The default LiFT of a backbone: ``lift_<model_type>.safetensors`` in ``pretrained_dir`` (when given) or the
    weights directories, else the one shipped with the package; None when there is none."""
    dirs = [Path(pretrained_dir)] if pretrained_dir is not None else weights_dirs()
    for d in dirs:
        path = d / f"lift_{model_type}.safetensors"
        if path.is_file():
            return path
    return packaged_lift_path(model_type)
