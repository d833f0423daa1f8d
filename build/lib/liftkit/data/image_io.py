"""Reading images robustly: any file a user may point at becomes an 8-bit RGB PIL image or one clear error.

Handled: EXIF orientation (applied), CMYK / YCbCr / LAB (converted), palette and grayscale (to RGB), transparency
(RGBA, LA, palette with alpha: composited over white), 16-bit and 32-bit integer images (scaled from their bit depth
to 8 bits, not clipped), float images (assumed in [0, 1]). Refused with :class:`ImageLoadError`: missing paths,
folders, empty files, files that are not images, truncated files, images with a side shorter than ``min_side`` and
images with more than ``max_pixels`` pixels (checked before decoding).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, List, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from liftkit.errors import ImageLoadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 100_000_000


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        depth = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) <= 65535) else 4294967295.0
        arr = np.clip(arr / depth * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(path: Union[str, Path], min_side: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image (see the module docstring for what is handled and what is refused).

    Args:
        path: image file.
        min_side: smallest accepted width/height in pixels (e.g. the patch size).
        max_pixels: largest accepted width * height.
    Returns:
        an RGB ``PIL.Image`` of the upright image, fully decoded.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"'{path}' does not exist; check the path")
    if path.is_dir():
        raise ImageLoadError(f"'{path}' is a folder, not an image; pass it as an input folder instead")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"'{path}' is an empty file (0 bytes); re-download or remove it")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    f"'{path}' is {w}x{h} px ({w * h / 1e6:.0f} MP), more than the {max_pixels / 1e6:.0f} MP limit; "
                    "downscale it first or raise --max_pixels"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
            rgb.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"'{path}' is not an image file PIL can read; remove it or convert it to JPEG/PNG") from None
    except Image.DecompressionBombError as exc:  # PIL refuses > 2 x MAX_IMAGE_PIXELS already at open()
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
        raise ImageLoadError(
            f"'{path}' is {size}, more than the {max_pixels / 1e6:.0f} MP limit (and PIL's safe-decoding limit); "
            "downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageLoadError(f"'{path}' is damaged or truncated ({msg}); re-download or remove it") from None
    if min(rgb.size) < min_side:
        raise ImageLoadError(
            f"'{path}' is {rgb.size[0]}x{rgb.size[1]} px, smaller than the {min_side}-px patch; "
            "use a larger image"
        )
    return rgb


def list_images(inputs: Iterable[Union[str, Path]], recursive: bool = True) -> List[Path]:
    """Expand files, folders (searched recursively for image extensions) and glob patterns into a sorted,
    de-duplicated list. A path that matches nothing is kept as is, so that loading it reports the error."""
    out: List[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            out += sorted(q for q in p.glob(pattern) if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        elif any(ch in s for ch in "*?[") and not p.exists():
            import glob

            out += sorted(Path(q) for q in glob.glob(s, recursive=True) if Path(q).is_file())
        else:
            out.append(p)
    return list(dict.fromkeys(out))
