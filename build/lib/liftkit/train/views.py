"""Fixed augmented views of every image, for a feature cache of augmented targets (``--cache_views``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from liftkit.errors import ConfigError
from liftkit.train.data import Augment, ImageFolderData


class ViewsData(ImageFolderData):
    """``views`` fixed views of every image (for a feature cache of augmented targets).

    Row ``r`` is view ``r % views`` of ``image_paths[r // views]`` (``paths[r]`` is that image's path, so per-row
    code works unchanged). View 0 is the plain input; view ``v > 0`` applies ``augment`` with the sample seed
    ``default_rng([seed, r, 2]).integers(2**62)``: the content of every row is fixed by (seed, r) alone.
    """

    def __init__(self, paths: Sequence[Path], size: int, mean: Sequence[float], std: Sequence[float], min_side: int,
                 policy: str, augment: Augment, views: int, seed: int):
        if views < 1:
            raise ConfigError(f"--cache_views {views} must be at least 1")
        super().__init__([q for q in paths for _ in range(views)], size, mean, std, min_side, policy, augment)
        self.image_paths = list(paths)
        self.views, self.seed = int(views), int(seed)

    def view_seed(self, row: int) -> int:
        return int(np.random.default_rng([self.seed, int(row), 2]).integers(0, 2**62))

    def __getitem__(self, item: Tuple[int, int]) -> Dict[str, object]:
        row = int(item[0])
        if row % self.views == 0:
            return self._item(row, Augment(), 0)
        return self._item(row, self.augment, self.view_seed(row))

    def rows(self, subset: Sequence[Path], all_views: bool = True) -> List[int]:
        """Rows of the images of ``subset`` (in its order): every view, or view 0 only."""
        pos = {q: i for i, q in enumerate(self.image_paths)}
        per = range(self.views) if all_views else range(1)
        return [pos[q] * self.views + v for q in subset for v in per]
