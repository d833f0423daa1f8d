"""Training data for LiFT: image folders, the train/val split, the S x S input, augmentations, the low-resolution
pair maker and the deterministic batch plan.

Shape notation: B batch, S the training size (``--imsize``), images (B, 3, S, S) normalised with the backbone's
mean/std.

* **Folders**: any folder, searched recursively for image files (:data:`liftkit.data.image_io.IMAGE_EXTENSIONS`),
  so ImageNet's ``train/<wnid>/*.JPEG`` layout and flat folders alike work. Paths are sorted by their path relative to
  the root, so every listing (and everything derived from it) is deterministic.
* **Split**: ``--val_fraction f`` holds out ``round(f * n)`` images (at least one when ``f > 0`` and ``n >= 2``) chosen
  by a permutation seeded with ``--seed`` over the sorted listing; ``--val_root`` takes a separate folder instead
  (images also found under the training root are removed from the training set). Validation images are never
  trained on.
* **Screening**: a cheap header check (no decoding) drops files PIL cannot identify, empty files and images smaller
  than the patch; images that fail later, while decoding, are dropped from their batch. Every skipped file is
  reported with its reason; nothing crashes.
* **Size policy** (``--resize``): ``crop`` (default) resizes the short side to S (bicubic, anti-aliased) and takes the
  centre S x S crop (a random crop with ``--random_crop``); ``squash`` resizes to S x S ignoring the aspect ratio, as
  the official script does (``transforms.Resize((S, S))``).
* **Augmentation**: ``--augment`` is the official colour jitter (``ColorJitter(0.2, 0.2, 0.2, 0.2)``: brightness,
  contrast, saturation factors in [0.8, 1.2], hue shift in [-0.2, 0.2], applied in a random order); ``--hflip`` and
  ``--random_crop`` are optional. All randomness of one sample comes from its own seed (see :class:`EpochPlan`), so
  an epoch's images are a pure function of (seed, epoch), whatever the number of data-loader workers or processes.
* **Cached views** (:class:`ViewsData`, ``--cache_views V``): V views per image, row ``r`` = view ``r % V`` of image
  ``r // V``; view 0 is the plain input, views 1.. draw crop position, zoom (``--scale_min``), flip and jitter from a
  seed that is a pure function of (``--seed``, r), so the feature cache can hold augmented targets.
* **Pairs**: the image at S/2 and S/4 is made from the S image by :func:`downsample`: ``antialias`` (default,
  ``F.interpolate(..., mode="bilinear", antialias=True)``, a triangle filter spanning the reduction factor),
  ``area`` (box filter: the mean of each f x f block) or ``strided`` (``x[..., ::f, ::f]``, the official code's
  aliased subsampling).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from liftkit.data.image_io import IMAGE_EXTENSIONS, list_images, load_image
from liftkit.data.transforms import to_tensor
from liftkit.errors import ConfigError, ImageLoadError

DOWNSAMPLE_MODES = ("antialias", "area", "strided")
RESIZE_POLICIES = ("crop", "squash")
JITTER_STRENGTH = 0.2  # the official ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2)


# ----------------------------------------------------------------------------------------------------- listing
def find_images(root: Path, limit: Optional[int] = None, flag: str = "--data_root") -> List[Path]:
    """All image files under ``root`` (recursive), sorted by relative path.

    Args:
        root: a folder.
        limit: keep at most this many, spread evenly over the sorted listing (``paths[i * n // limit]``), so a small
            limit still samples every ImageNet class folder rather than only the first ones.
        flag: the option name used in error messages.
    Raises:
        ConfigError: the folder does not exist, is a file, or holds no image file.
    """
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"{flag} '{root}' does not exist; give a folder of images")
    if not root.is_dir():
        raise ConfigError(f"{flag} '{root}' is a file, not a folder; give the folder that holds the images")
    paths = list_images([root], recursive=True)
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise ConfigError(
            f"{flag} '{root}' holds no image files (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit {limit} must be at least 1")
        n = len(paths)
        if limit < n:
            paths = [paths[i * n // limit] for i in range(limit)]
    return paths


def split_train_val(paths: Sequence[Path], val_fraction: float, seed: int) -> Tuple[List[Path], List[Path]]:
    """Deterministic split of a sorted listing into (train, val), both sorted.

    The held-out set is the first ``n_val`` entries of a permutation seeded by ``seed`` (independent of the order
    ``paths`` arrives in: it is sorted first), with ``n_val = round(val_fraction * n)``, at least 1 when
    ``val_fraction > 0`` and ``n >= 2``, and never all of them.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val_fraction {val_fraction} must be in [0, 1)")
    ordered = sorted(paths, key=lambda p: str(p))
    n = len(ordered)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n >= 1 else 0
    perm = np.random.default_rng([int(seed), 0x5917]).permutation(n)
    val_idx = set(perm[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_idx]
    val = [p for i, p in enumerate(ordered) if i in val_idx]
    return train, val


def listing_digest(paths: Sequence[Path]) -> str:
    """sha256 (hex) of the listing: every path with its size and its first 4 KiB, in order.

    Changes when a file is added, removed, renamed or rewritten (a rewrite that keeps both the size and the first
    4 KiB -- headers, quantisation tables, the start of the scan -- goes unseen); used to key caches and to refuse
    resuming a run on other data. Timestamps are left out on purpose: a data set copied anew (same files, new
    mtimes) keeps its caches and its resumable runs.
    """
    h = hashlib.sha256()
    for p in paths:
        try:
            with open(p, "rb") as f:
                head = f.read(4096)
                size = os.fstat(f.fileno()).st_size
            h.update(f"{Path(p).resolve()}\0{size}\0".encode() + hashlib.sha256(head).digest() + b"\n")
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def probe_image(path: Path, min_side: int) -> Optional[str]:
    """Cheap header check (no decoding): None if the file looks usable, else the reason it is skipped."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            w, h = img.size
    except UnidentifiedImageError:
        return "not an image file PIL can read"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if min(w, h) < min_side:
        return f"{w}x{h} px, smaller than the {min_side}-px patch"
    return None


def screen_images(paths: Sequence[Path], min_side: int) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """Split ``paths`` into (usable, [(skipped path, reason)]) by :func:`probe_image`."""
    good: List[Path] = []
    bad: List[Tuple[Path, str]] = []
    for p in paths:
        why = probe_image(p, min_side)
        if why is None:
            good.append(p)
        else:
            bad.append((p, why))
    return good, bad


# ----------------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Augment:
    """Which augmentations are on (all off = the deterministic, cacheable input)."""

    color_jitter: bool = False
    hflip: bool = False
    random_crop: bool = False
    scale_min: float = 1.0  # zoom: the crop covers a random fraction in [scale_min, 1] of the short side

    @property
    def any(self) -> bool:
        return self.color_jitter or self.hflip or self.random_crop or self.scale_min < 1.0


def fit_square(
    image: Image.Image, size: int, policy: str = "crop", crop_at: Tuple[float, float] = (0.5, 0.5),
    zoom: float = 1.0,
) -> Image.Image:
    """Resize an RGB image to ``size x size`` by the size policy.

    Args:
        policy: ``crop`` (short side to ``size``, then a ``size x size`` crop) or ``squash`` (resize to
            ``size x size``).
        crop_at: (fx, fy) in [0, 1]: where the crop window sits along the free axes (0.5 = centre).
        zoom: >= 1; the short side is resized to ``size * zoom`` before the crop (so the crop covers 1/zoom of it).
    """
    if policy not in RESIZE_POLICIES:
        raise ConfigError(f"unknown --resize '{policy}'; choose one of: {', '.join(RESIZE_POLICIES)}")
    w, h = image.size
    if policy == "squash":
        return image if (w, h) == (size, size) else image.resize((size, size), Image.BICUBIC)
    s = size * float(zoom) / min(w, h)
    nw, nh = max(size, int(round(w * s))), max(size, int(round(h * s)))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC)
    left = int(round((nw - size) * float(crop_at[0])))
    top = int(round((nh - size) * float(crop_at[1])))
    return image.crop((left, top, left + size, top + size))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64))


def color_jitter(image: Image.Image, gen: torch.Generator, strength: float = JITTER_STRENGTH) -> Image.Image:
    """The official colour jitter: brightness, contrast, saturation factors in [1 - s, 1 + s] and a hue shift in
    [-s, s], applied in a random order (torchvision's ``ColorJitter(s, s, s, s)``), drawn from ``gen``."""
    from torchvision.transforms import functional as TF

    b = _uniform(gen, 1 - strength, 1 + strength)
    c = _uniform(gen, 1 - strength, 1 + strength)
    s = _uniform(gen, 1 - strength, 1 + strength)
    hue = _uniform(gen, -strength, strength)
    ops = (
        lambda im: TF.adjust_brightness(im, b),
        lambda im: TF.adjust_contrast(im, c),
        lambda im: TF.adjust_saturation(im, s),
        lambda im: TF.adjust_hue(im, hue),
    )
    for i in torch.randperm(4, generator=gen).tolist():
        image = ops[i](image)
    return image


def prepare_image(
    image: Image.Image,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    policy: str = "crop",
    augment: Augment = Augment(),
    sample_seed: int = 0,
) -> torch.Tensor:
    """RGB image -> (3, S, S) normalised float32, with this sample's augmentations drawn from ``sample_seed``."""
    gen = torch.Generator().manual_seed(int(sample_seed))
    crop_at = (0.5, 0.5)
    if augment.random_crop:
        crop_at = (_uniform(gen, 0.0, 1.0), _uniform(gen, 0.0, 1.0))
    zoom = 1.0 / _uniform(gen, augment.scale_min, 1.0) if augment.scale_min < 1.0 else 1.0
    image = fit_square(image, size, policy, crop_at, zoom)
    if augment.hflip and bool(torch.rand((), generator=gen) < 0.5):
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if augment.color_jitter:
        image = color_jitter(image, gen)
    return to_tensor(image, (size, size), mean, std)[0]


class ImageFolderData(torch.utils.data.Dataset):
    """Images of a listing as (3, S, S) training inputs.

    Items are addressed by ``(index, sample_seed)`` pairs (see :class:`EpochPlan`); an item is a dict with ``index``
    and either ``image`` (3, S, S) or ``error`` (the one-line reason the file was skipped).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        min_side: int,
        policy: str = "crop",
        augment: Augment = Augment(),
    ):
        self.paths = list(paths)
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self.min_side = min_side
        self.policy = policy
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: Tuple[int, int]) -> Dict[str, object]:
        return self._item(int(item[0]), self.augment, int(item[1]))

    def _item(self, index: int, augment: Augment, sample_seed: int) -> Dict[str, object]:
        try:
            img = load_image(self.paths[index], min_side=self.min_side)
        except ImageLoadError as exc:
            return {"index": index, "error": str(exc)}
        x = prepare_image(img, self.size, self.mean, self.std, self.policy, augment, sample_seed)
        return {"index": index, "image": x}


def collate_images(items: List[Dict[str, object]]) -> Dict[str, object]:
    """Stack the good items of a batch.

    Returns:
        ``index`` (B,) long, ``image`` (B, 3, S, S) or None when no item was readable, ``errors`` [(index, msg)].
    """
    good = [it for it in items if "image" in it]
    errors = [(int(it["index"]), str(it["error"])) for it in items if "error" in it]
    return {
        "index": torch.tensor([int(it["index"]) for it in good], dtype=torch.long),
        "image": torch.stack([it["image"] for it in good]) if good else None,
        "errors": errors,
    }


# ----------------------------------------------------------------------------------------------------- pairs
def downsample(x: torch.Tensor, factor: int, mode: str = "antialias") -> torch.Tensor:
    """Reduce an image batch by an integer factor.

    Args:
        x: (B, 3, H, W) with H and W multiples of ``factor``.
        mode: ``antialias`` (bilinear with anti-aliasing: a triangle filter of support 2 * factor input pixels),
            ``area`` (mean of each factor x factor block) or ``strided`` (``x[..., ::factor, ::factor]``, aliased).
    Returns:
        (B, 3, H / factor, W / factor), same dtype.
    """
    if mode not in DOWNSAMPLE_MODES:
        raise ConfigError(f"unknown --downsample '{mode}'; choose one of: {', '.join(DOWNSAMPLE_MODES)}")
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ConfigError(f"cannot reduce a {h}x{w} image by {factor}: the sides must be multiples of {factor}")
    if mode == "strided":
        return x[..., ::factor, ::factor]
    if mode == "area":
        return F.avg_pool2d(x, factor)
    dtype = x.dtype
    y = F.interpolate(x.float(), size=(h // factor, w // factor), mode="bilinear", align_corners=False, antialias=True)
    return y.to(dtype)


def make_pyramid(x: torch.Tensor, mode: str = "antialias") -> Tuple[torch.Tensor, torch.Tensor]:
    """The two low-resolution inputs of the paper's pairs, both made from the full-size image.

    Args:
        x: (B, 3, S, S).
    Returns:
        (x_half (B, 3, S/2, S/2), x_quarter (B, 3, S/4, S/4)).
    """
    return downsample(x, 2, mode), downsample(x, 4, mode)


# ----------------------------------------------------------------------------------------------------- batch plan
@dataclass(frozen=True)
class EpochPlan:
    """Which items each process takes in each batch of one epoch: a pure function of (n, batch size, seed, epoch,
    rank, world size).

    The epoch's order is ``default_rng([seed, epoch, 0]).permutation(n)``; position ``i`` of the epoch carries the
    sample seed ``default_rng([seed, epoch, 1]).integers(2**62, size=n)[i]`` (its augmentation randomness). Global
    batch ``b`` is positions ``[b * B, (b + 1) * B)`` (the incomplete last batch is dropped); process ``rank`` of
    ``world`` takes the contiguous slice ``[rank * B / world, (rank + 1) * B / world)`` of it.
    """

    n: int
    batch_size: int
    seed: int
    epoch: int
    rank: int = 0
    world: int = 1

    @property
    def num_batches(self) -> int:
        return self.n // self.batch_size

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world

    def _order(self) -> Tuple[np.ndarray, np.ndarray]:
        perm = np.random.default_rng([int(self.seed), int(self.epoch), 0]).permutation(self.n)
        seeds = np.random.default_rng([int(self.seed), int(self.epoch), 1]).integers(0, 2**62, size=self.n)
        return perm, seeds

    def global_batch(self, b: int) -> List[Tuple[int, int]]:
        """All (index, sample_seed) of global batch ``b``."""
        perm, seeds = self._order()
        pos = range(b * self.batch_size, (b + 1) * self.batch_size)
        return [(int(perm[i]), int(seeds[i])) for i in pos]

    def local_batches(self, start: int = 0) -> List[List[Tuple[int, int]]]:
        """This process's (index, sample_seed) lists for global batches ``start .. num_batches - 1``."""
        perm, seeds = self._order()
        bl = self.local_batch_size
        out = []
        for b in range(start, self.num_batches):
            first = b * self.batch_size + self.rank * bl
            out.append([(int(perm[i]), int(seeds[i])) for i in range(first, first + bl)])
        return out
