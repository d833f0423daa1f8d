"""Training settings: :class:`TrainConfig` (the single source of the defaults), their checks, and the callbacks a
caller can install in the trainer (:class:`TrainHooks`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from liftkit.errors import ConfigError
from liftkit.lift.model import ARCHS, ATTEND_PRIORS, HEADS
from liftkit.specs import get_spec
from liftkit.train.data import DOWNSAMPLE_MODES, RESIZE_POLICIES, Augment
from liftkit.train.objective import LOSSES

AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Resolved training settings, and the single source of their defaults (``train_lift.py`` reads its flag defaults
    from these fields; see ``train_lift.py --help``)."""

    data_root: str
    output_dir: str = ""  # "" -> runs/lift_<model_type>
    model_type: str = "dinov2_vits14_imgfocus"
    layer: int = -1
    facet: str = "key"
    channel_order: str = "dim_major"
    backbone_weights: Optional[str] = None
    offline: bool = False
    random_init: bool = False
    imsize: int = 448
    resize: str = "crop"
    downsample: str = "antialias"
    loss: str = "cosine"
    residual: bool = False  # legacy spelling of head="residual"
    head: str = "plain"  # plain | residual | attend (liftkit.lift.model.HEADS)
    head_kernel: int = 3  # attend head: k x k neighbourhood
    head_prior: str = "bilinear"  # attend head: prior of its logits
    arch: str = "lift"  # lift | lift_noimage | resize_conv (liftkit.lift.model.ARCHS)
    lr: float = 1e-3
    init_lift: Optional[str] = None  # start from this LiFT file's weights (fine-tuning); same backbone setup and head
    match_weight: float = 0.0  # weight of the correspondence term (liftkit.train.matching); 0 = the paper's objective
    match_temp: float = 0.02  # its softmax temperature (cosine / temp)
    match_grid: int = 12  # its G x G query points per target view
    match_scale_min: float = 0.5  # its target views: sub-boxes of side [match_scale_min, 1] of the input
    epochs: int = 10
    batch_size: int = 8
    save_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    augment: bool = False
    hflip: bool = False
    random_crop: bool = False
    scale_min: float = 1.0  # zoom augmentation: the crop covers [scale_min, 1] of the short side
    cache_views: int = 1  # views per image in the feature cache (view 0 plain, the others augmented)
    val_fraction: float = 0.05
    val_root: Optional[str] = None
    limit: Optional[int] = None
    cache_dir: Optional[str] = None
    device: str = "auto"
    amp: str = "none"
    num_workers: int = 2
    threads: int = 0  # torch CPU threads, applied by the script (0 = torch's default); recorded for the record
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.output_dir:
            self.output_dir = f"runs/lift_{self.model_type}"

    def recipe_identity(self) -> dict:
        """The settings beyond the paper's that a resumed run must share (each only when it is not the default, so
        the identity of runs made before it existed is unchanged)."""
        out = {}
        if self.arch != "lift":
            out["arch"] = self.arch
        if self.lift_head == "attend":
            out.update(head=self.lift_head, head_kernel=self.head_kernel, head_prior=self.head_prior)
        if self.cache_views > 1 or self.scale_min < 1:
            out.update(cache_views=self.cache_views, scale_min=self.scale_min)
        if self.match_weight > 0:
            out["match"] = [self.match_weight, self.match_temp, self.match_grid, self.match_scale_min]
        if self.init_lift:
            out["init_lift"] = str(self.init_lift)
        return out

    @property
    def augmentation(self) -> Augment:
        return Augment(color_jitter=self.augment, hflip=self.hflip, random_crop=self.random_crop,
                       scale_min=self.scale_min)

    @property
    def lift_head(self) -> str:
        return "residual" if self.residual and self.head == "plain" else self.head


@dataclass
class TrainHooks:
    """Callbacks into a running trainer (none by default; tests install them, e.g. to kill the process).

    Attributes:
        after_step: called with the global step number after every optimiser step (rank 0 and others alike).
        before_checkpoint_replace: called with (step, temporary file) between writing a training checkpoint and
            renaming it into place (rank 0 only).
    """

    after_step: Optional[Callable[[int], None]] = None
    before_checkpoint_replace: Optional[Callable[[int, Path], None]] = None


def validate_config(cfg: TrainConfig, world: int = 1) -> None:
    """Cheap checks of the flags, before anything heavy is loaded (one-line ConfigError each)."""
    p = get_spec(cfg.model_type).patch_size
    if cfg.imsize <= 0 or cfg.imsize % (4 * p):
        ok = max(4 * p, (cfg.imsize // (4 * p)) * 4 * p)
        raise ConfigError(
            f"--imsize {cfg.imsize} does not fit the {p}-px patch of {cfg.model_type}: S/4 must be a whole number of "
            f"patches, so S must be a multiple of 4*{p}={4 * p} (e.g. {ok} or {ok + 4 * p})"
        )
    checks = [
        (cfg.loss in LOSSES, f"unknown --loss '{cfg.loss}'; choose one of: {', '.join(LOSSES)}"),
        (cfg.downsample in DOWNSAMPLE_MODES,
         f"unknown --downsample '{cfg.downsample}'; choose one of: {', '.join(DOWNSAMPLE_MODES)}"),
        (cfg.resize in RESIZE_POLICIES,
         f"unknown --resize '{cfg.resize}'; choose one of: {', '.join(RESIZE_POLICIES)}"),
        (cfg.amp in AMP_MODES, f"unknown --amp '{cfg.amp}'; choose one of: {', '.join(AMP_MODES)}"),
        (cfg.epochs >= 1, f"--epochs {cfg.epochs} must be at least 1"),
        (cfg.batch_size >= 1, f"--batch_size {cfg.batch_size} must be at least 1"),
        (cfg.lr > 0, f"--lr {cfg.lr} must be positive"),
        (cfg.match_weight >= 0, f"--match_weight {cfg.match_weight} must be >= 0 (0 = the paper's objective)"),
        (0 < cfg.match_temp <= 1, f"--match_temp {cfg.match_temp} must be in (0, 1]"),
        (2 <= cfg.match_grid <= 64, f"--match_grid {cfg.match_grid} must be in 2..64"),
        (0.25 <= cfg.match_scale_min <= 1.0, f"--match_scale_min {cfg.match_scale_min} must be in [0.25, 1]"),
        (cfg.init_lift is None or Path(cfg.init_lift).is_file(),
         f"--init_lift '{cfg.init_lift}' does not exist; give a LiFT .safetensors file or drop the flag"),
        (cfg.save_every >= 0, f"--save_every {cfg.save_every} must be >= 0 (0 = only at the end of each epoch)"),
        (cfg.seed >= 0, f"--seed {cfg.seed} must be >= 0"),
        (cfg.num_workers >= 0, f"--num_workers {cfg.num_workers} must be >= 0"),
        (cfg.threads >= 0, f"--threads {cfg.threads} must be >= 0"),
        (0.0 <= cfg.val_fraction < 1.0, f"--val_fraction {cfg.val_fraction} must be in [0, 1)"),
        (cfg.batch_size % world == 0, f"--batch_size {cfg.batch_size} (the global batch) must be divisible by the "
                                      f"{world} processes"),
        (not (cfg.cache_dir and cfg.augmentation.any and cfg.cache_views < 2),
         "--cache_dir with one view per image stores un-augmented targets and cannot be combined with "
         "--augment/--hflip/--random_crop/--scale_min; pass --cache_views N (N >= 2) or drop the augmentation"),
        (cfg.cache_views >= 1, f"--cache_views {cfg.cache_views} must be at least 1"),
        (cfg.cache_views == 1 or (cfg.cache_dir and cfg.augmentation.any),
         f"--cache_views {cfg.cache_views} needs --cache_dir and an augmentation (--random_crop, --scale_min, "
         "--hflip or --augment)"),
        (0.1 <= cfg.scale_min <= 1.0, f"--scale_min {cfg.scale_min} must be in [0.1, 1]"),
        (cfg.arch in ARCHS, f"unknown --arch '{cfg.arch}'; choose one of: {', '.join(ARCHS)}"),
        (cfg.lift_head in HEADS, f"unknown --head '{cfg.head}'; choose one of: {', '.join(HEADS)}"),
        (cfg.head_kernel >= 3 and cfg.head_kernel % 2 == 1 and cfg.head_kernel <= 9,
         f"--head_kernel {cfg.head_kernel} must be odd and in 3..9"),
        (cfg.head_prior in ATTEND_PRIORS,
         f"unknown --head_prior '{cfg.head_prior}'; choose one of: {', '.join(ATTEND_PRIORS)}"),
        (not (cfg.residual and cfg.head not in ("plain", "residual")),
         f"--residual contradicts --head {cfg.head}; drop --residual"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
