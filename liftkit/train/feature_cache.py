"""A keyed on-disk cache of the frozen backbone's training targets.

Without augmentation every epoch feeds the backbone the same images, so its three passes per image (at S, S/2 and
S/4) can be computed once. The cache stores, per image, ``feat_full`` (C, S/p, S/p), ``feat_half`` (C, S/2p, S/2p),
``feat_quarter`` (C, S/4p, S/4p), ``img_half`` (3, S/2, S/2) and ``img_quarter`` (3, S/4, S/4), all float16, as
``.npy`` memory maps (rows in listing order) plus a ``status`` array (0 = not computed, 1 = done, 2 = unreadable
image). About 1.4 MB per image for a ViT-S/14 at S = 448.

**Keying**: the folder name ends in a digest of everything the content depends on: the cache format, backbone
name, backbone weights digest, layer, facet, channel order, mean/std, S, the resize policy, the downsampling mode and
the listing (every path with its size and first 4 KiB, not its mtime). Any change gives another folder, so a stale
cache is never read.
``key.json`` in the folder holds the fields and is checked again on open.

**Building** is chunked (fixed index ranges of ``chunk`` images, so the same images are always batched together
and the content does not depend on how the build was interrupted or split), resumable (chunks whose status is
still 0 are computed on the next run) and shardable (process ``rank`` of ``world`` builds chunks ``k`` with
``k % world == rank``). ``manifest.json``, written last and atomically, marks a complete cache and lists the
unreadable images with their reasons.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from liftkit.errors import ConfigError, LiftKitError

CACHE_FORMAT = "liftkit.feature_cache/1"
ARRAYS = ("feat_full", "feat_half", "feat_quarter", "img_half", "img_quarter")
TODO, DONE, BAD = 0, 1, 2
FP16_MAX = 65504.0


def cache_key(fields: Dict[str, object]) -> str:
    """sha256 (hex) of the key fields (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FeatureCache:
    """The cache for one (backbone setup, S, listing).

    Args:
        root: ``--cache_dir``; the cache lives in a sub-folder named after the key.
        fields: key fields other than the listing (backbone, weights digest, layer, facet, order, mean, std, imsize,
            resize, downsample).
        listing_digest: :func:`liftkit.train.data.listing_digest` of ``n`` paths.
        n: number of images (rows).
        channels: C.
        patch_size: p.
        imsize: S.
    """

    def __init__(self, root: Path, fields: Dict[str, object], listing_digest: str, n: int, channels: int,
                 patch_size: int, imsize: int):
        self.fields = dict(fields, format=CACHE_FORMAT, listing=listing_digest, n=int(n), dtype="float16")
        self.key = cache_key(self.fields)
        label = f"{fields.get('backbone', 'vit')}-L{fields.get('layer', '')}-{fields.get('facet', '')}-S{imsize}"
        self.dir = Path(root) / f"{label}-{self.key[:16]}"
        self.n = int(n)
        g = imsize // patch_size
        self.shapes: Dict[str, Tuple[int, ...]] = {
            "feat_full": (channels, g, g),
            "feat_half": (channels, g // 2, g // 2),
            "feat_quarter": (channels, g // 4, g // 4),
            "img_half": (3, imsize // 2, imsize // 2),
            "img_quarter": (3, imsize // 4, imsize // 4),
        }
        self._arrays: Dict[str, np.ndarray] = {}
        self._status: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ layout
    @property
    def bytes_per_image(self) -> int:
        return int(sum(2 * np.prod(s) for s in self.shapes.values()))

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def is_complete(self) -> bool:
        """True when a finished cache with this exact key exists."""
        if not self.manifest_path.is_file():
            return False
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return False
        return manifest.get("key") == self.key and manifest.get("complete") is True

    def manifest(self) -> Dict[str, object]:
        return json.loads(self.manifest_path.read_text())

    # ------------------------------------------------------------------ create / open
    def create(self) -> None:
        """Create the folder and the (zero-filled) arrays, or keep an interrupted build of the same key.

        Call on one process only (rank 0), then :meth:`open` everywhere.
        """
        key_path = self.dir / "key.json"
        if key_path.is_file():
            try:
                same = json.loads(key_path.read_text()).get("key") == self.key
            except (OSError, ValueError):
                same = False
            if same and all((self.dir / f"{a}.npy").is_file() for a in ARRAYS + ("status",)):
                return  # an interrupted build: continue it
            shutil.rmtree(self.dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the feature cache folder '{self.dir}' ({exc}); pass a writable --cache_dir"
            ) from None
        need = self.bytes_per_image * self.n
        free = shutil.disk_usage(self.dir).free
        if need > free:
            raise ConfigError(
                f"the feature cache needs {need / 1e9:.1f} GB in '{self.dir.parent}' but only {free / 1e9:.1f} GB are "
                "free; free space, choose another --cache_dir or train without --cache_dir"
            )
        for name in ARRAYS:
            np.lib.format.open_memmap(self.dir / f"{name}.npy", mode="w+", dtype=np.float16,
                                      shape=(self.n,) + self.shapes[name])
        np.lib.format.open_memmap(self.dir / "status.npy", mode="w+", dtype=np.uint8, shape=(self.n,))
        _atomic_write_text(key_path, json.dumps({"key": self.key, "fields": self.fields}, indent=1, sort_keys=True))

    def open(self, writable: bool = False) -> None:
        """Map the arrays (read-only unless ``writable``)."""
        mode = "r+" if writable else "r"
        try:
            for name in ARRAYS:
                arr = np.load(self.dir / f"{name}.npy", mmap_mode=mode)
                if arr.shape != (self.n,) + self.shapes[name] or arr.dtype != np.float16:
                    raise LiftKitError(f"feature cache array '{self.dir / name}.npy' has shape {arr.shape}, expected "
                                       f"{(self.n,) + self.shapes[name]}; delete '{self.dir}' and rerun")
                self._arrays[name] = arr
            self._status = np.load(self.dir / "status.npy", mmap_mode=mode)
        except (OSError, ValueError) as exc:
            raise LiftKitError(f"cannot read the feature cache '{self.dir}' ({exc}); delete it and rerun") from None

    @property
    def status(self) -> np.ndarray:
        assert self._status is not None, "open() the cache first"
        return self._status

    # ------------------------------------------------------------------ build
    def chunks(self, chunk: int) -> List[List[int]]:
        """The fixed chunks: ``[[0 .. chunk-1], [chunk .. 2 chunk - 1], ...]``."""
        return [list(range(s, min(s + chunk, self.n))) for s in range(0, self.n, chunk)]

    def pending_chunks(self, chunk: int, rank: int = 0, world: int = 1) -> List[List[int]]:
        """This process's chunks that still hold an uncomputed image."""
        status = self.status
        return [c for k, c in enumerate(self.chunks(chunk)) if k % world == rank and (status[c] == TODO).any()]

    def write(self, indices: Sequence[int], targets: Dict[str, torch.Tensor], bad: Iterable[Tuple[int, str]] = (),
              rank: int = 0) -> None:
        """Store the targets of ``indices`` (rows of each (B, ...) tensor, in order) and mark unreadable images.

        The reasons of unreadable images are appended to ``errors_rank<r>.jsonl`` before their status is set.
        """
        bad = list(bad)
        if bad:
            with open(self.dir / f"errors_rank{rank}.jsonl", "a") as f:
                for idx, msg in bad:
                    f.write(json.dumps({"index": int(idx), "error": msg}) + "\n")
        if len(indices):
            idx = np.asarray(indices, dtype=np.int64)
            for name in ARRAYS:
                t = targets[name].detach().float()
                if name.startswith("feat") and bool(t.abs().max() > FP16_MAX):
                    raise LiftKitError(
                        f"backbone features exceed the float16 range ({float(t.abs().max()):.3g}); the feature cache "
                        "cannot hold them: train without --cache_dir"
                    )
                self._arrays[name][idx] = t.cpu().numpy().astype(np.float16)
            self.status[idx] = DONE
        for i, _ in bad:
            self.status[int(i)] = BAD

    def finalize(self) -> Dict[str, object]:
        """Flush, then write ``manifest.json`` (key, counts, the unreadable images). Call on one process, after all
        processes finished writing."""
        for arr in self._arrays.values():
            if hasattr(arr, "flush"):
                arr.flush()
        status = np.load(self.dir / "status.npy")
        if (status == TODO).any():
            missing = int((status == TODO).sum())
            raise LiftKitError(f"feature cache '{self.dir}' is incomplete ({missing} images missing); rerun")
        errors: Dict[int, str] = {}
        for p in sorted(self.dir.glob("errors_rank*.jsonl")):
            for line in p.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    errors[int(rec["index"])] = rec["error"]
        manifest = {"key": self.key, "complete": True, "fields": self.fields, "n": self.n,
                    "n_done": int((status == DONE).sum()), "bad": {str(k): v for k, v in sorted(errors.items())}}
        _atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
        return manifest

    # ------------------------------------------------------------------ read
    def valid(self) -> np.ndarray:
        """(n,) bool: images whose targets are stored."""
        return np.asarray(self.status) == DONE

    def gather(self, indices: Sequence[int], device: torch.device = torch.device("cpu")) -> Dict[str, torch.Tensor]:
        """The targets of ``indices`` as float32 tensors on ``device``.

        Keys and shapes as :func:`liftkit.train.objective.make_targets` returns them, rows in the order of ``indices``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        out = {}
        for name in ARRAYS:
            rows = np.asarray(self._arrays[name][idx[order]])[inv]  # read in file order, then restore batch order
            out[name] = torch.from_numpy(rows).to(device=device, dtype=torch.float32)
        return out
