"""lift_extractor's engine for one process (one torchrun rank): DataLoader input, batched compute, writes off the
compute thread, one manifest record per image.

Order of work: the DataLoader's workers read and resize images (in list order); the main thread groups inputs of
equal size into batches exactly as the single-thread path did (a size's batch is run when it holds ``--batch_size``
images; at most ``16 x --batch_size`` images wait, then the oldest size is run, so memory stays flat over any
number of sizes); one writer thread saves the outputs while the next batch is computed.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from liftkit.cli import options
from liftkit.data.loader import ImageFiles, image_loader
from liftkit.errors import LiftKitError, first_line
from liftkit.methods import Method
from liftkit.io.feature_files import save_features
from liftkit.io.feature_store import ShardWriter
from liftkit.io.outputs import atomic_write, check_output_file

SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

MEMORY_FLAGS = {"size": "--load_size", "lift_iter": "--lift_iter", "methods": "--lift_iter", "batch": "--batch_size"}


@dataclass
class Job:
    """One image of this rank's shard: where it comes from and where its features go."""

    index: int          # position in the full (all ranks) image list
    path: Path
    out: Optional[Path]  # feature file (file-per-image mode)
    key: Optional[str]   # store key (sharded-store mode)


def record(job: Job, status: str, output: Optional[str] = None, grid: Optional[str] = None,
           error: Optional[str] = None) -> Dict:
    """One manifest line: file, output, grid, status (ok | skipped | failed), error."""
    return {"file": str(job.path), "output": output, "grid": grid, "status": status, "error": error}


class _Writer:
    """Saves on one background thread; at most ``limit`` saves in flight (flat memory). Each save returns
    ``(written, failed)``: image index -> output path, image index -> one-line error."""

    def __init__(self, limit: int):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liftkit-writer")
        self.inflight: "deque[Future]" = deque()
        self.limit = limit
        self.written: Dict[int, str] = {}
        self.failed: Dict[int, str] = {}

    def submit(self, fn: Callable[[], tuple]) -> None:
        self.inflight.append(self.pool.submit(fn))
        while len(self.inflight) > self.limit:
            self._collect(self.inflight.popleft())

    def _collect(self, fut: Future) -> None:
        written, failed = fut.result()  # save functions catch their own errors
        self.written.update(written)
        self.failed.update(failed)

    def close(self) -> None:
        try:
            while self.inflight:
                self._collect(self.inflight.popleft())
        finally:
            self.pool.shutdown(wait=True)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _file_saver(jobs, tensors, metas, fmt: str) -> Callable[[], tuple]:
    def save() -> tuple:
        written, failed = {}, {}
        for j, t, m in zip(jobs, tensors, metas):
            try:
                written[j.index] = str(save_features(j.out, t, m, fmt))
            except Exception as exc:  # a failed write fails the image, not the run
                failed[j.index] = f"'{j.out}': could not be written ({_first_line(exc)})"
        return written, failed
    return save


class _StoreSaver:
    """Adds images to the shard writer on the writer thread; knows which images each written shard holds."""

    def __init__(self, store: ShardWriter):
        self.store, self.members = store, []

    def _done(self, path: Optional[Path], written: Dict, failed: Dict, exc: Optional[BaseException]) -> None:
        for j in self.members:
            if exc is not None:
                failed[j.index] = f"'{j.key}': could not be written to {self.store.folder} ({_first_line(exc)})"
            else:
                written[j.index] = str(path)
        self.members = []

    def saver(self, jobs, tensors, metas) -> Callable[[], tuple]:
        def save() -> tuple:
            written, failed = {}, {}
            for j, t, m in zip(jobs, tensors, metas):
                self.members.append(j)
                try:
                    path = self.store.add(j.key, t, m)
                except Exception as exc:
                    self.store.discard()
                    self._done(None, written, failed, exc)
                    continue
                if path is not None:
                    self._done(path, written, failed, None)
            return written, failed
        return save

    def finisher(self) -> Callable[[], tuple]:
        def finish() -> tuple:
            written, failed = {}, {}
            try:
                path = self.store.flush()
            except Exception as exc:
                self.store.discard()
                self._done(None, written, failed, exc)
            else:
                self._done(path, written, failed, None)
            return written, failed
        return finish


def extract_shard(ext, jobs: List[Job], args, plan: List[str], out_name: str, base_meta: Dict[str, str],
                  is_main: bool, store: Optional[ShardWriter] = None, store_done: Optional[Dict[str, str]] = None,
                  desc: str = "extract", stats: Optional[Dict[str, float]] = None) -> List[Dict]:
    """Extract this process's ``jobs``; returns their manifest records (in ``jobs`` order).

    ``stats``, if given, receives ``input_wait`` (seconds the compute thread waited for the DataLoader),
    ``compute`` (seconds in the model, CUDA synchronised) and ``loop`` (seconds of the whole loop).

    ``store_done``: key -> shard of the images already in the store (skipped unless ``--overwrite``).
    """
    records: Dict[int, Dict] = {}
    todo: List[Job] = []
    store_done = store_done or {}
    for j in jobs:
        if j.out is not None:
            try:  # a name too long, a file in the way: this image fails, the others go on
                check_output_file(j.out, "output file")
            except LiftKitError as exc:
                records[j.index] = record(j, "failed", error=f"{j.path}: {exc}")
                continue
        if j.out is not None and j.out.exists() and not args.overwrite:
            records[j.index] = record(j, "skipped", output=str(j.out))
        elif j.key is not None and j.key in store_done and not args.overwrite:
            records[j.index] = record(j, "skipped", output=str(store.folder / store_done[j.key]))
        else:
            todo.append(j)
    save_dtype = SAVE_DTYPES[args.save_dtype]
    cuda = torch.device(ext.device).type == "cuda"
    official = getattr(args, "protocol", "ours") == "official"  # ext.spec holds the official mean/std then
    ds = ImageFiles([j.path for j in todo], ext.patch_size, ext.spec.mean, ext.spec.std, args.load_size or None,
                    args.resize_mode, args.max_pixels, args.max_tokens, keep_image=args.save_vis, official=official)
    loader = image_loader(ds, args.num_workers, pin_memory=cuda)

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), initial=len(records), desc=desc, unit="img", disable=args.quiet or not is_main,
               file=sys.stderr, smoothing=0.05)
    failed: Dict[int, str] = {}
    grids: Dict[int, str] = {}
    writer = _Writer(limit=2 * args.batch_size + 2)
    saver = _StoreSaver(store) if store is not None else None
    pending: "OrderedDict[tuple, list]" = OrderedDict()
    waiting = [0]

    def fail(j: Job, msg: str) -> None:
        failed[j.index] = msg
        bar.set_postfix(failed=len(failed) + len(writer.failed), refresh=False)

    def flush(key) -> None:
        batch = pending.pop(key)
        waiting[0] -= len(batch)
        x = torch.cat([item["x"] for _, item in batch]).to(ext.device, non_blocking=cuda)
        t0 = time.perf_counter()
        try:
            feats = ext.features(x, plan)
            if cuda:
                torch.cuda.synchronize(ext.device)
        except RuntimeError as exc:  # e.g. out of memory on a huge input
            for j, _ in batch:
                fail(j, f"{j.path}: {first_line(exc)}")
            bar.update(len(batch))
            return
        clock["compute"] += time.perf_counter() - t0
        low, out = feats["low"], feats[out_name]
        jobs_b, tensors, metas = [], [], []
        for i, (j, item) in enumerate(batch):
            meta = {**base_meta, "image": str(j.path), "image_size": "%dx%d" % item["size"],
                    "input_size": "%dx%d" % tuple(x.shape[-2:]), "grid_low": "%dx%d" % tuple(low.shape[-2:]),
                    "grid": "%dx%d" % tuple(out.shape[-2:])}
            grids[j.index] = meta["grid"]
            jobs_b.append(j)
            tensors.append(out[i] if save_dtype == torch.float32 else out[i].to(save_dtype))
            metas.append(meta)
            if args.save_vis and j.out is not None:
                try:  # a panel that cannot be written fails its image only; the run goes on
                    _save_vis(j.out, item["image"], low[i], out[i], args)
                except LiftKitError as exc:
                    fail(j, f"{j.path}: --save_vis: {exc}")
        writer.submit(saver.saver(jobs_b, tensors, metas) if saver else _file_saver(jobs_b, tensors, metas,
                                                                                      args.format))
        bar.update(len(batch))

    clock = {"input_wait": 0.0, "compute": 0.0}
    start = time.perf_counter()
    try:
        items = iter(loader)
        while True:
            t0 = time.perf_counter()
            item = next(items, None)
            clock["input_wait"] += time.perf_counter() - t0
            if item is None:
                break
            j = todo[item["index"]]
            if item["error"] is not None:
                fail(j, item["error"])
                bar.update(1)
                continue
            key = tuple(item["x"].shape[-2:])
            try:  # this image at its size, in a full batch: over --max_memory_gb it fails alone
                options.check_memory(args, ext.spec, key[0], key[1], [Method.parse(n) for n in plan],
                                     MEMORY_FLAGS, args.batch_size, str(j.path))
            except LiftKitError as exc:
                fail(j, str(exc))
                bar.update(1)
                continue
            pending.setdefault(key, []).append((j, item))
            waiting[0] += 1
            if len(pending[key]) >= args.batch_size:
                flush(key)
            elif waiting[0] > 16 * args.batch_size:
                flush(next(iter(pending)))
        for key in list(pending):
            flush(key)
        if saver is not None:
            writer.submit(saver.finisher())
    finally:
        writer.close()
        bar.close()
    if stats is not None:
        stats.update(clock, loop=time.perf_counter() - start)
    failed.update(writer.failed)
    for j in todo:
        if j.index in failed:
            records[j.index] = record(j, "failed", error=failed[j.index])
        else:
            records[j.index] = record(j, "ok", writer.written.get(j.index), grids.get(j.index))
    return [records[j.index] for j in jobs]


def _save_vis(out: Path, image, low: torch.Tensor, feat: torch.Tensor, args) -> None:
    from liftkit.vis.panels import save_pca_panel

    label = "none" if args.no_lift else (args.upsample or "lift")
    title = {"none": "backbone", "lift": f"LiFT x{args.lift_iter}"}.get(label, label)
    maps, titles = ([low], ["backbone"]) if args.no_lift else ([low, feat], ["backbone", title])
    path = out.with_name(out.stem + "_vis.png")
    with atomic_write(path, "--save_vis") as tmp:
        save_pca_panel(tmp, image, maps, titles)
