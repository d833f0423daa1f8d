"""Parallel image input: a torch DataLoader whose workers read, EXIF-rotate, convert, resize and normalise images.

Each item is a dict ``{"index", "path", "x", "size", "image", "error"}``: ``x`` the (1, 3, H, W) float32 input
(exactly what :meth:`liftkit.extractor.ViTExtractor.load_image` gives), ``size`` the (W, H) of the upright original,
``image`` the RGB PIL image when asked for (else None). A file that cannot be used comes back with ``x=None`` and
``error`` the one-line message of :class:`~liftkit.errors.ImageLoadError`: a worker never raises, so one bad file
never stops a run. Items come in the order of the path list (the DataLoader keeps order), so batching on the main
thread is the same with 0 or N workers.

Sharding for torchrun: :func:`shard` gives rank ``r`` of ``world`` the items ``r, r + world, ...`` of the (sorted,
deterministic) list.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from PIL import Image

from liftkit.data.image_io import DEFAULT_MAX_PIXELS, load_image
from liftkit.data.transforms import official_to_tensor, target_size, to_tensor
from liftkit.errors import ImageLoadError, LiftKitError


def check_tokens(path, image_wh: Tuple[int, int], size_hw: Sequence[int], patch_size: int,
                 max_tokens: Optional[int]) -> None:
    """Refuse (ImageLoadError) an input whose patch grid has more than ``max_tokens`` tokens."""
    h, w = size_hw[0] // patch_size, size_hw[1] // patch_size
    if max_tokens is not None and h * w > max_tokens:
        raise ImageLoadError(
            f"'{path}' ({image_wh[0]}x{image_wh[1]} px) gives a {h}x{w} patch grid ({h * w} tokens), more than "
            f"--max_tokens {max_tokens}; lower --load_size or use --resize_mode square"
        )


class ImageFiles(Dataset):
    """Image files -> model inputs (see the module docstring), one item per path."""

    def __init__(self, paths: Sequence[Path], patch_size: int, mean: Sequence[float], std: Sequence[float],
                 load_size: Optional[int] = None, resize_mode: str = "short",
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_tokens: Optional[int] = None, keep_image: bool = False,
                 official: bool = False):
        self.paths = [Path(p) for p in paths]
        self.patch_size, self.mean, self.std = patch_size, tuple(mean), tuple(std)
        self.load_size, self.resize_mode = load_size, resize_mode
        self.max_pixels, self.max_tokens, self.keep_image = max_pixels, max_tokens, keep_image
        self.official = official  # the official LiFT preprocessing (--protocol official; see official_to_tensor)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        path = self.paths[i]
        item: Dict[str, Any] = {"index": i, "path": str(path), "x": None, "size": None, "image": None, "error": None}
        try:
            if self.official:
                with Image.open(path) as im:
                    img = im.convert("RGB")
                item["x"] = official_to_tensor(img, self.load_size, self.mean, self.std, self.patch_size)
                check_tokens(path, img.size, tuple(item["x"].shape[-2:]), self.patch_size, self.max_tokens)
            else:
                img = load_image(path, min_side=self.patch_size, max_pixels=self.max_pixels)
                size = target_size(img.size, self.patch_size, self.load_size, self.resize_mode)
                check_tokens(path, img.size, size, self.patch_size, self.max_tokens)
                item["x"] = to_tensor(img, size, self.mean, self.std)
            item["size"] = img.size
            if self.keep_image:
                item["image"] = img
        except LiftKitError as exc:
            item["error"] = str(exc)
        except Exception as exc:  # a worker must never take the run down: report the file instead
            msg = str(exc).splitlines()[0] if str(exc) else ""
            item["error"] = f"'{path}' could not be read ({type(exc).__name__}{': ' + msg if msg else ''})"
        return item


def default_num_workers(local_world: int = 1) -> int:
    """Input workers per process: the CPUs this process may use, shared among the node's processes, minus one
    for the compute thread; at most 8; 0 (read on the main thread) when there is a single CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, local_world) - 1))


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # resizing is PIL's; a worker's torch ops are tiny


def image_loader(dataset: ImageFiles, num_workers: int, pin_memory: bool = False,
                 prefetch_factor: int = 2) -> DataLoader:
    """Items of ``dataset`` in order, read by ``num_workers`` processes (0: on the calling thread)."""
    kwargs: Dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, worker_init_fn=_one_thread, persistent_workers=False)
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                      collate_fn=_identity, **kwargs)


def _identity(item):
    return item


def shard(items: Sequence, rank: int, world: int) -> List:
    """Rank ``rank``'s share of ``items``: every ``world``-th item from ``rank`` (deterministic, balanced)."""
    return list(items[rank::world])
