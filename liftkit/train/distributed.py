"""Multi-process training helpers: the process group, small collectives, and BatchNorm over the global batch.

Launch with ``torchrun --nproc_per_node N train_lift.py ...`` (or ``python -m torch.distributed.run``): the
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables select DistributedDataParallel. The backend is
NCCL on CUDA and gloo on CPU.

BatchNorm: LiFT's BatchNorm layers should see the statistics of the whole global batch, as in a 1-process run.
On CUDA this is ``torch.nn.SyncBatchNorm``. ``SyncBatchNorm`` refuses CPU modules under DDP ("SyncBatchNorm layers
only work with GPU modules"), so on CPU :class:`CrossRankBatchNorm2d` does the same with differentiable all-reduces
(mean, then variance about that mean, over all processes' samples; gradients flow through the collectives). Both keep
the parameter and buffer names of ``nn.BatchNorm2d``, so state dicts are interchangeable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world`` (``local_rank`` on its node); ``enabled`` under torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(use_cuda: bool) -> DistContext:
    """Join the process group torchrun set up (no-op for a single process)."""
    if not launched_distributed():
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), enabled=True)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_(t: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``min`` or ``max``) of a tensor; identity for one process."""
    if ctx.enabled:
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(t, op=ops[op])
    return t


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's Python object, in rank order, on every rank (``[obj]`` for one process)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: forward all-reduces the tensor, backward all-reduces its gradient (every
    process's output depends on every process's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        g = grad.clone()
        dist.all_reduce(g)
        return g


def all_reduce_sum_autograd(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over all processes, with gradients flowing back to every process's ``x``."""
    return _AllReduceSum.apply(x)


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics cover the samples of all processes (CPU SyncBatchNorm).

    Forward in training mode (input (B, C, H, W), the local part of the global batch):
    ``mean = all_reduce(sum x) / N``, ``var = all_reduce(sum (x - mean)^2) / N`` with ``N`` the global count of
    values per channel; running statistics get the unbiased variance ``var * N / (N - 1)`` as ``nn.BatchNorm2d``
    does. The all-reduces are autograd-aware, so the backward pass equals that of one process on the whole batch.
    Eval mode, or a single process, is plain ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        n = count[0]
        mean = all_reduce_sum_autograd(x.sum(dim=(0, 2, 3))) / n
        centered = x - mean.view(1, c, 1, 1)
        var = all_reduce_sum_autograd(centered.pow(2).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = centered * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm for DDP: ``SyncBatchNorm`` on CUDA, :class:`CrossRankBatchNorm2d` on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_cross_rank(module)


def _to_cross_rank(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = CrossRankBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(module.weight.device if module.affine else next(iter(module.buffers())).device)
    for name, child in module.named_children():
        setattr(module, name, _to_cross_rank(child))
    return module


def ddp_wrap(module: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel (no-op for one process)."""
    if not ctx.enabled:
        return module
    ids: Optional[list] = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else ctx.local_rank]
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
