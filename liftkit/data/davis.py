"""DAVIS-2017 (semi-supervised video object segmentation) in its official folder layout.

Layout under the DAVIS root (``resolution`` is ``480p`` unless told otherwise)::

    JPEGImages/<resolution>/<seq>/00000.jpg ...     the frames, all of one size
    Annotations/<resolution>/<seq>/00000.png ...    palette ("P") PNGs: pixel value = object id
                                                    (0 background, 1..N objects, 255 void)
    ImageSets/2017/<set>.txt                        one sequence name per line (``val``, ``train``, ...)

Objects are numbered from the palette indices of frame 0's mask, as the official davis2017-evaluation code does:
a sequence has ``N = max(label of frame 0)`` objects, ids 1..N (255 = void counts as background). A later
annotation may only use labels that occur in frame 0. Every inconsistency is a :class:`DatasetError` whose one-line
message names the sequence and the frame.

Label maps are ``np.ndarray`` (H, W) uint8 of object ids; :func:`write_label_png` writes them as palette PNGs with
the DAVIS (PASCAL VOC) colour map, readable by the official evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from liftkit.data.image_io import load_image
from liftkit.errors import DatasetError

VOID_LABEL = 255
FRAME_EXT = ".jpg"
MASK_EXT = ".png"

PathLike = Union[str, Path]


def davis_palette() -> List[int]:
    """The 256-entry DAVIS / PASCAL VOC colour map as a flat [r0, g0, b0, r1, ...] list (768 ints)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = davis_palette()


def read_label_png(path: PathLike, what: str = "mask") -> np.ndarray:
    """Read an indexed (palette, "P") or 8-bit grayscale ("L") PNG as its raw label indices.

    Args:
        path: the PNG file.
        what: how the error messages call the file (e.g. ``"sequence 'dog' frame 00012 mask"``).
    Returns:
        (H, W) uint8 label map (palette indices, not colours).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{what} '{path}' is missing")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DatasetError(
                    f"{what} '{path}' is a {img.mode} image, not a palette (indexed) PNG of object ids; "
                    "save masks as palette PNGs whose indices are the object ids"
                )
            return np.array(img, dtype=np.uint8)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{what} '{path}' cannot be read as a PNG ({exc}); re-create it") from None


def write_label_png(path: PathLike, labels: np.ndarray) -> None:
    """Write an (H, W) map of object ids (0..255) as a palette PNG with the DAVIS colour map."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("label ids must be in 0..255 to fit a palette PNG")
    img = Image.fromarray(labels.astype(np.uint8))  # mode "L"; putpalette turns it into "P"
    img.putpalette(_PALETTE)
    img.save(Path(path))


def _image_size_hw(path: Path, what: str) -> Tuple[int, int]:
    """(H, W) from the file header (no decoding)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{what} '{path}' cannot be read as an image ({exc}); re-download it") from None
    return h, w


@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: its frames, its annotations and the frame size.

    Attributes:
        name: sequence name (``blackswan``).
        frame_paths: the JPEG frames, sorted by name; frame 0 is ``frame_paths[0]``.
        annotation_paths: the annotated frames' PNGs, sorted; the first one is frame 0's mask. In ``val`` every
            frame is annotated; in ``test-dev`` only frame 0 is.
        size_hw: (H, W) of every frame and mask.
    """

    name: str
    frame_paths: Tuple[Path, ...]
    annotation_paths: Tuple[Path, ...]
    size_hw: Tuple[int, int]

    @property
    def n_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def frame_names(self) -> Tuple[str, ...]:
        """Frame stems (``00000``...), also the names of their masks."""
        return tuple(p.stem for p in self.frame_paths)

    @property
    def annotation_names(self) -> Tuple[str, ...]:
        return tuple(p.stem for p in self.annotation_paths)

    def load_frame(self, index: int):
        """Frame ``index`` as an RGB ``PIL.Image`` of ``size_hw``."""
        return load_image(self.frame_paths[index])

    def _where(self, path: Path) -> str:
        return f"sequence '{self.name}' frame {path.stem}"

    def _load_mask(self, path: Path) -> np.ndarray:
        labels = read_label_png(path, f"{self._where(path)} mask")
        if labels.shape != tuple(self.size_hw):
            raise DatasetError(
                f"{self._where(path)}: mask '{path}' is {labels.shape[1]}x{labels.shape[0]} px but the frames are "
                f"{self.size_hw[1]}x{self.size_hw[0]}; use masks of the frames' resolution"
            )
        return labels

    def first_mask(self) -> np.ndarray:
        """Frame 0's object ids, (H, W) uint8, void (255) turned into background (0)."""
        path = self.annotation_paths[0]
        labels = self._load_mask(path)
        labels = np.where(labels == VOID_LABEL, 0, labels).astype(np.uint8)
        if labels.max() == 0:
            raise DatasetError(
                f"{self._where(path)}: the first-frame mask '{path}' contains no object (all background); "
                "the semi-supervised task needs the objects in frame 0"
            )
        return labels

    def num_objects(self) -> int:
        """N = the largest object id in frame 0 (objects are 1..N, as in the official evaluator)."""
        return int(self.first_mask().max())

    def load_annotations(self) -> Tuple[Tuple[str, ...], np.ndarray]:
        """All ground-truth masks, checked against frame 0.

        Returns:
            (frame names, (T, H, W) uint8 object ids) for the annotated frames; void (255) becomes 0.
        Raises:
            DatasetError if a mask uses a label that does not occur in frame 0, or has another size.
        """
        first = self.first_mask()
        allowed = set(np.unique(first).tolist()) | {0, VOID_LABEL}
        out = np.empty((len(self.annotation_paths), *self.size_hw), dtype=np.uint8)
        out[0] = first
        for t, path in enumerate(self.annotation_paths[1:], start=1):
            labels = self._load_mask(path)
            unknown = sorted(set(np.unique(labels).tolist()) - allowed)
            if unknown:
                raise DatasetError(
                    f"{self._where(path)}: mask '{path}' has label(s) {unknown} that do not occur in frame 0 "
                    f"(labels {sorted(allowed - {0, VOID_LABEL})}); fix the annotation or its palette indices"
                )
            out[t] = np.where(labels == VOID_LABEL, 0, labels)
        return self.annotation_names, out


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{what} '{path}' is missing; {hint}")


def read_set_file(root: PathLike, set_name: str = "val") -> List[str]:
    """Sequence names listed in ``<root>/ImageSets/2017/<set_name>.txt`` (blank lines ignored, order kept)."""
    root = Path(root)
    _require_dir(root, "DAVIS root", "pass the folder that holds JPEGImages/, Annotations/ and ImageSets/")
    sets_dir = root / "ImageSets" / "2017"
    _require_dir(sets_dir, "DAVIS set folder", "the DAVIS root must contain ImageSets/2017/<set>.txt")
    set_file = sets_dir / f"{set_name}.txt"
    if not set_file.is_file():
        known = sorted(p.stem for p in sets_dir.glob("*.txt"))
        raise DatasetError(
            f"DAVIS set file '{set_file}' is missing; choose --set from: {', '.join(known) or '(none found)'}"
        )
    names: List[str] = []
    for line in set_file.read_text().splitlines():
        name = line.strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise DatasetError(f"DAVIS set file '{set_file}' lists no sequence; put one sequence name per line")
    return names


def load_sequence(root: PathLike, name: str, resolution: str = "480p") -> DavisSequence:
    """Index one sequence: list its frames and masks and check that they fit together.

    Checks (each failure is a one-line :class:`DatasetError` naming sequence and frame): the frame and annotation
    folders exist, there are frames, frame 0 has a mask, every mask belongs to a frame, and all frames and masks have
    one size. Mask contents are checked when loaded (:meth:`DavisSequence.load_annotations`).
    """
    root = Path(root)
    frame_dir = root / "JPEGImages" / resolution / name
    mask_dir = root / "Annotations" / resolution / name
    _require_dir(frame_dir, f"sequence '{name}': frame folder", f"check --data_root and that '{name}' is a DAVIS "
                 f"sequence at {resolution}")
    _require_dir(mask_dir, f"sequence '{name}': annotation folder", "the first-frame masks are needed; check the "
                 "DAVIS download")
    frames = tuple(sorted(frame_dir.glob(f"*{FRAME_EXT}")))
    if not frames:
        raise DatasetError(f"sequence '{name}': no {FRAME_EXT} frame in '{frame_dir}'")
    masks = tuple(sorted(mask_dir.glob(f"*{MASK_EXT}")))
    frame_names = [p.stem for p in frames]
    if not masks or masks[0].stem != frame_names[0]:
        raise DatasetError(
            f"sequence '{name}' frame {frame_names[0]}: the mask for frame 0 "
            f"'{mask_dir / (frame_names[0] + MASK_EXT)}' is missing; semi-supervised propagation starts from it"
        )
    known = set(frame_names)
    for m in masks:
        if m.stem not in known:
            raise DatasetError(f"sequence '{name}' frame {m.stem}: mask '{m}' has no frame '{frame_dir / m.stem}"
                               f"{FRAME_EXT}'; remove it or restore the frame")
    size = _image_size_hw(frames[0], f"sequence '{name}' frame {frames[0].stem}")
    for path in frames[1:]:
        hw = _image_size_hw(path, f"sequence '{name}' frame {path.stem}")
        if hw != size:
            raise DatasetError(
                f"sequence '{name}' frame {path.stem}: '{path}' is {hw[1]}x{hw[0]} px but frame {frames[0].stem} is "
                f"{size[1]}x{size[0]}; all frames of a sequence must have one size"
            )
    for path in masks:
        hw = _image_size_hw(path, f"sequence '{name}' frame {path.stem} mask")
        if hw != size:
            raise DatasetError(
                f"sequence '{name}' frame {path.stem}: mask '{path}' is {hw[1]}x{hw[0]} px but the frames are "
                f"{size[1]}x{size[0]}; use masks of the frames' resolution"
            )
    return DavisSequence(name=name, frame_paths=frames, annotation_paths=masks, size_hw=size)


def load_davis(
    root: PathLike, set_name: str = "val", sequences: Optional[Sequence[str]] = None, resolution: str = "480p",
    skipped: Optional[List[Tuple[str, str]]] = None,
) -> List[DavisSequence]:
    """The sequences of a DAVIS-2017 set (or the named subset of it), each indexed by :func:`load_sequence`.

    Args:
        root: the DAVIS root folder.
        set_name: ``ImageSets/2017/<set_name>.txt``.
        sequences: optional subset; every name must be listed in the set file.
        skipped: when given (``--skip_bad``), a sequence that fails to load is appended as (name, message) and left
            out instead of raising.
    """
    names = read_set_file(root, set_name)
    if sequences:
        unknown = [s for s in sequences if s not in names]
        if unknown:
            raise DatasetError(
                f"sequence(s) {', '.join(unknown)} not listed in DAVIS set '{set_name}'; "
                f"choose from: {', '.join(names)}"
            )
        names = [n for n in names if n in set(sequences)]
    if skipped is None:
        return [load_sequence(root, n, resolution) for n in names]
    out = []
    for n in names:
        try:
            out.append(load_sequence(root, n, resolution))
        except DatasetError as exc:
            skipped.append((n, str(exc)))
    return out

