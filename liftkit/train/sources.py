"""Where training targets come from: the feature cache (:class:`CachedSource`, built on first use by
:func:`cached_source`) or the backbone now (:class:`LiveSource`). Both yield ``(targets, [(path, reason)])`` per batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from liftkit.errors import ConfigError
from liftkit.train.data import (
    ImageFolderData, collate_images, find_images, listing_digest, screen_images, split_train_val,
)
from liftkit.train.views import ViewsData
from liftkit.train.distributed import barrier
from liftkit.train.feature_cache import FeatureCache
from liftkit.train.objective import Targets, make_targets

# one batch from a target source: the targets (None when no image of it was readable) and [(path, reason)] skipped
Batch = Tuple[Optional[Targets], List[Tuple[str, str]]]


class CachedSource:
    """Targets read from a :class:`FeatureCache`; ``rows`` maps dataset positions to cache rows."""

    def __init__(self, cache: FeatureCache, rows: Sequence[int], device: torch.device):
        self.cache, self.rows, self.device = cache, list(rows), device

    def __len__(self) -> int:
        return len(self.rows)

    def iterate(self, batches: List[List[Tuple[int, int]]]) -> Iterator[Batch]:
        for items in batches:
            yield self.cache.gather([self.rows[i] for i, _ in items], self.device), []


class LiveSource:
    """Targets computed now: images decoded by a DataLoader, three backbone passes per batch."""

    def __init__(self, dataset: ImageFolderData, rows: Sequence[int], extract: Callable, downsample: str,
                 device: torch.device, num_workers: int, autocast: Callable):
        self.dataset, self.rows, self.extract = dataset, list(rows), extract
        self.downsample, self.device, self.num_workers, self.autocast = downsample, device, num_workers, autocast

    def __len__(self) -> int:
        return len(self.rows)

    def iterate(self, batches: List[List[Tuple[int, int]]]) -> Iterator[Batch]:
        mapped = [[(self.rows[i], s) for i, s in items] for items in batches]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=mapped, collate_fn=collate_images, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        for batch in loader:
            errors = [(str(self.dataset.paths[i]), msg) for i, msg in batch["errors"]]
            if batch["image"] is None:
                yield None, errors
                continue
            images = batch["image"].to(self.device, non_blocking=True)
            with self.autocast():
                targets = make_targets(self.extract, images, self.downsample)
            yield {k: v.float() for k, v in targets.items()}, errors


def path_rows(paths: Sequence[Path], subset: Sequence[Path]) -> List[int]:
    """Rows of ``subset`` (in its order) in a one-view listing."""
    pos = {q: i for i, q in enumerate(paths)}
    return [pos[q] for q in subset]

def valid_rows(cache: FeatureCache, rows: Sequence[int]) -> List[int]:
    """``rows`` without the images the cache found unreadable."""
    valid = cache.valid()
    return [r for r in rows if valid[r]]

def cached_source(trainer, ds: ImageFolderData, split: str, rows: Sequence[int]) -> CachedSource:
    """Open (building it first if needed) the feature cache of all of ``ds``; the source serves ``rows``.

    ``trainer``: the running :class:`~liftkit.train.loop.Trainer` (its config, processes, backbone, log and bars).
    """
    cfg, ctx, ext = trainer.cfg, trainer.ctx, trainer.ext
    fields = {"backbone": ext.spec.name, "weights_sha256": ext.info.weights_sha256, "layer": int(ext.layer),
              "facet": ext.facet, "channel_order": ext.channel_order, "mean": list(ext.spec.mean),
              "std": list(ext.spec.std), "imsize": cfg.imsize, "resize": cfg.resize, "downsample": cfg.downsample}
    if isinstance(ds, ViewsData):
        aug = cfg.augmentation
        fields.update(views=ds.views, view_seed=ds.seed, augment=aug.color_jitter, hflip=aug.hflip,
                      random_crop=aug.random_crop, scale_min=aug.scale_min)
    cache = FeatureCache(Path(cfg.cache_dir), fields, listing_digest(ds.paths), len(ds), ext.embed_dim,
                         ext.patch_size, cfg.imsize)
    built = 0
    if not cache.is_complete():
        trainer._on_main(cache.create)
        barrier(ctx)
        cache.open(writable=True)
        chunks = cache.pending_chunks(cfg.batch_size, ctx.rank, ctx.world)
        built = sum(len(c) for c in chunks)
        n_all = sum(len(c) for c in cache.pending_chunks(cfg.batch_size))
        trainer.say(f"feature cache ({split}): computing the backbone targets of {n_all} images into {cache.dir}")
        src = LiveSource(ds, range(len(ds)), ext.extract_descriptors, cfg.downsample, trainer.device,
                          cfg.num_workers, trainer.autocast)
        bar = trainer.bar(len(chunks), 0, f"cache {split}")
        t0 = time.time()
        for items, (targets, errors) in zip(chunks, src.iterate([[(i, 0) for i in c] for c in chunks])):
            why = dict(errors)  # path -> reason; every row (view) of an unreadable image is bad
            bad = [(i, why[str(ds.paths[i])]) for i in items if str(ds.paths[i]) in why]
            ok = [i for i in items if str(ds.paths[i]) not in why]
            cache.write(ok, targets or {}, bad, ctx.rank)
            bar.update(1)
        bar.close()
        barrier(ctx)
        trainer._on_main(cache.finalize)
        barrier(ctx)
        trainer.log.write("cache_built", split=split, dir=str(cache.dir), images=n_all,
                       seconds=round(time.time() - t0, 2))
    else:
        trainer.log.write("cache_reused", split=split, dir=str(cache.dir), images=len(ds))
        trainer.say(f"feature cache ({split}): reusing {cache.dir}")
    cache.open(writable=False)
    bad = cache.manifest().get("bad", {})
    trainer._note_skipped([(str(ds.paths[int(k)]), v) for k, v in bad.items()])
    return CachedSource(cache, valid_rows(cache, rows), trainer.device)


def list_training_images(cfg, patch_size: int, say: Callable[[str], None]):
    """The images of a run: (listed, usable, [(path, why unusable)], train paths, validation paths), split by
    ``--val_root`` (disjoint folders) or ``--val_fraction`` and ``--seed`` over the usable images."""
    p = patch_size
    listed = find_images(Path(cfg.data_root), cfg.limit)
    usable, bad = screen_images(listed, p)
    if not usable:
        raise ConfigError(f"none of the {len(listed)} image files under '{cfg.data_root}' can be used (first: "
                          f"{bad[0][0]}: {bad[0][1]}); check the folder")
    if cfg.val_root:
        val_listed = find_images(Path(cfg.val_root), cfg.limit, flag="--val_root")
        val_paths, bad_val = screen_images(val_listed, p)
        bad = bad + bad_val
        held = {q.resolve() for q in val_listed}
        train_paths = [q for q in usable if q.resolve() not in held]
        if len(train_paths) < len(usable):
            say(f"{len(usable) - len(train_paths)} images of --data_root are also under --val_root: "
                     "they are used for validation only")
        if not train_paths:
            raise ConfigError(f"every usable image of --data_root '{cfg.data_root}' is also under --val_root; "
                              "give disjoint folders")
    else:
        # the split is made on the usable images, so the validation set has the requested size
        train_paths, val_paths = split_train_val(usable, cfg.val_fraction, cfg.seed)
    return listed, usable, bad, train_paths, val_paths
