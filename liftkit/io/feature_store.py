"""A sharded feature store: many images' features in a few safetensors files plus one index.

Written by ``lift_extractor.py --shard_size N`` (so a million images are not a million small files). Layout of the
store folder:

    shard-r<rank:05d>-<seq:05d>.safetensors   up to N images each; written whole and atomically (temp + rename)
    index.json                                 {"format": "liftkit-feature-store", "version": 1, "count": n,
                                                "images": {key: shard file name}}

A shard holds one tensor per image, named by the image's key (its path relative to the input root, without
extension, ``/``-separated), of shape (C, h', w') in the saved dtype; its header metadata has ``common`` (JSON: the
metadata shared by every image of the shard: backbone, weights, method, provenance...) and ``images`` (JSON: key ->
the image's own fields: image, image_size, input_size, grid_low, grid). An image's metadata is ``common`` updated by
its own fields: the same flat ``{str: str}`` dict a feature file carries (:mod:`liftkit.io.feature_files`).

Read with :class:`FeatureStore`: ``store = FeatureStore(folder)``; ``len(store)``, ``store.keys()``,
``key in store``, ``features, metadata = store.load(key)`` (one image, read lazily from its shard). Without an
index (a run that was stopped) the shards' headers are scanned instead.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

STORE_FORMAT, STORE_VERSION, INDEX = "liftkit-feature-store", 1, "index.json"
OWN_FIELDS = ("image", "image_size", "input_size", "grid_low", "grid")
_SHARD = re.compile(r"^shard-r(\d{5})-(\d{5})\.safetensors$")


def shard_files(folder: Path) -> List[Path]:
    """The complete shards in ``folder`` (temp files of an interrupted write are not listed), sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("shard-r*.safetensors") if _SHARD.match(p.name)) if folder.is_dir() else []


def shard_keys(path: Path) -> List[str]:
    """Image keys held by one shard (read from its header only)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(json.loads((f.metadata() or {}).get("images", "{}")))


def scan_store(folder: Path) -> Dict[str, str]:
    """key -> shard file name, from the shards' headers (for resuming, or reading a store without index)."""
    out: Dict[str, str] = {}
    for p in shard_files(folder):
        for k in shard_keys(p):
            out.setdefault(k, p.name)
    return out


def write_index(folder: Path) -> Path:
    """Scan the shards and write ``index.json`` atomically. Returns its path."""
    folder = Path(folder)
    images = scan_store(folder)
    body = {"format": STORE_FORMAT, "version": STORE_VERSION, "count": len(images), "images": images}
    path = folder / INDEX
    tmp = folder / f".{INDEX}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(body, sort_keys=True))
    os.replace(tmp, path)
    return path


class ShardWriter:
    """Collects images and writes a shard of ``shard_size`` of them at a time (not thread-safe: one writer).

    Shards are named ``shard-r<rank>-<seq>``; ``seq`` continues after this rank's existing shards, so a resumed
    run (even with another number of processes) never overwrites a finished shard.
    """

    def __init__(self, folder: Path, shard_size: int, rank: int = 0):
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.folder, self.shard_size, self.rank = Path(folder), shard_size, rank
        self.folder.mkdir(parents=True, exist_ok=True)
        seqs = [int(m.group(2)) for p in shard_files(self.folder) if (m := _SHARD.match(p.name))
                and int(m.group(1)) == rank]
        self.seq = max(seqs, default=-1) + 1
        self._tensors: Dict[str, torch.Tensor] = {}
        self._meta: Dict[str, Dict[str, str]] = {}
        self.written: List[Path] = []

    def add(self, key: str, features: torch.Tensor, metadata: Dict[str, str]) -> Optional[Path]:
        """Queue one image's (C, h, w) features; writes (and returns) a shard when ``shard_size`` are queued."""
        assert features.dim() == 3, f"expected (C, h, w), got {tuple(features.shape)}"
        if key in self._tensors:
            raise ValueError(f"image key {key!r} twice in one shard")
        self._tensors[key] = features.detach().cpu().contiguous()
        self._meta[key] = {str(k): str(v) for k, v in metadata.items()}
        return self.flush() if len(self._tensors) >= self.shard_size else None

    def discard(self) -> None:
        """Drop the queued images (after a failed write)."""
        self._tensors, self._meta = {}, {}

    def flush(self) -> Optional[Path]:
        """Write the queued images as one shard (nothing if none are queued)."""
        if not self._tensors:
            return None
        from safetensors.torch import save_file

        metas = list(self._meta.values())
        common = {k: v for k, v in metas[0].items() if k not in OWN_FIELDS and all(m.get(k) == v for m in metas)}
        own = {k: {f: v for f, v in m.items() if f not in common} for k, m in self._meta.items()}
        path = self.folder / f"shard-r{self.rank:05d}-{self.seq:05d}.safetensors"
        tmp = self.folder / f".{path.name}.{os.getpid()}.tmp"
        save_file(self._tensors, str(tmp), metadata={"format": STORE_FORMAT, "version": str(STORE_VERSION),
                                                      "common": json.dumps(common, sort_keys=True),
                                                      "images": json.dumps(own, sort_keys=True)})
        os.replace(tmp, path)
        self.seq += 1
        self._tensors, self._meta = {}, {}
        self.written.append(path)
        return path


class FeatureStore:
    """Read a store written by :class:`ShardWriter` image by image (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.exists():
            body = json.loads(index.read_text())
            if body.get("format") != STORE_FORMAT:
                raise ValueError(f"{index}: not a liftkit feature store index")
            self._where: Dict[str, str] = body["images"]
        elif shard_files(self.folder):
            self._where = scan_store(self.folder)
        else:
            raise FileNotFoundError(f"{self.folder}: no {INDEX} and no shard-r*.safetensors; not a feature store")

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> List[str]:
        return sorted(self._where)

    def load(self, key: str) -> Tuple[torch.Tensor, Dict[str, str]]:
        """((C, h, w) tensor in its saved dtype, metadata) of one image."""
        from safetensors import safe_open

        if key not in self._where:
            raise KeyError(f"{key!r} is not in the feature store {self.folder}")
        with safe_open(str(self.folder / self._where[key]), framework="pt") as f:
            header = f.metadata() or {}
            meta = {**json.loads(header.get("common", "{}")), **json.loads(header.get("images", "{}"))[key]}
            return f.get_tensor(key), meta
