"""Training LiFT: data, objective, feature cache, checkpoints, distributed helpers and the training loop.

Modules:
    :mod:`liftkit.train.data`           image folders, the train/val split, the S x S crop, augmentations, the
                                        low-resolution pair maker, and the deterministic per-epoch batch plan.
    :mod:`liftkit.train.objective`      the paper's two reconstruction pairs (S/2 -> S, S/4 -> S/2), the losses and the
                                        validation metric (cosine to the 2x-input target, LiFT vs bilinear/nearest).
    :mod:`liftkit.train.feature_cache`  a keyed on-disk cache of the frozen backbone's targets (fp16 memory maps).
    :mod:`liftkit.train.checkpointing`  atomic training-state checkpoints (model, optimiser, counters, RNG states).
    :mod:`liftkit.train.distributed`    process-group setup, per-rank sharding helpers, cross-rank BatchNorm on CPU.
    :mod:`liftkit.train.loop`           :class:`~liftkit.train.loop.Trainer`, which ties them together.
"""
