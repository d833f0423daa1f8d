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


def lift_file_names(model_type: str, facet: str = "key") -> List[str]:
    """The names a shipped LiFT of ``model_type`` may have, in search order: ``lift_<model_type>_<facet>.safetensors``
    for a facet other than ``key``, then ``lift_<model_type>.safetensors`` (the key facet's, the official naming)."""
    base = f"lift_{model_type}"
    return ([f"{base}_{facet}.safetensors"] if facet != "key" else []) + [f"{base}.safetensors"]


def _packaged(name: str) -> Optional[Path]:
    ref = resources.files("liftkit.pretrained") / name
    return Path(str(ref)) if ref.is_file() else None


def packaged_lift_path(model_type: str, facet: str = "key") -> Optional[Path]:
    """The LiFT for ``model_type`` (and ``facet``) shipped inside the installed package, if there is one."""
    return next((p for p in map(_packaged, lift_file_names(model_type, facet)) if p is not None), None)


def shipped_lift_path(model_type: str, pretrained_dir: Optional[Path] = None, facet: str = "key") -> Optional[Path]:
    """The default LiFT of a backbone and facet: the first of :func:`lift_file_names` found in ``pretrained_dir``
    (when given) or the weights directories, then in the package; None when there is none. A facet with no file of
    its own gets the key facet's, which the extractor then refuses in one line (trained for another facet)."""
    dirs = [Path(pretrained_dir)] if pretrained_dir is not None else weights_dirs()
    for name in lift_file_names(model_type, facet):
        found = next((d / name for d in dirs if (d / name).is_file()), None) or _packaged(name)
        if found is not None:
            return found
    return None
