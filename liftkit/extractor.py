"""liftkit.extractor: the one module that loads ViT backbones and their dense facets, with or without LiFT.

Every script of the toolkit goes through :class:`ViTExtractor` (``from liftkit import ViTExtractor``; the top-level
``extractor.py`` of a checkout re-exports it); it is the only place that builds backbones (DINO v1, supervised timm
ViTs, DINOv2, and the offline ``dinov2_vits14_imgfocus``) and applies LiFT.

Shape notation (used in every docstring of the toolkit):
    B   batch size
    T   tokens, prefix included: T = P + h * w, P = CLS + registers (from the model: 0 SigLIP, 1 DINO, 5 DINOv2-reg)
    C   channels of a facet (384 for ViT-S, 768 for ViT-B)
    p   patch size in pixels (8, 14 or 16)
    H, W  input image height and width in pixels, multiples of p
    h, w  patch grid: h = H // p, w = W // p
LiFT maps (B, C, h, w) to (B, C, 2h, 2w); k iterations give (B, C, 2^k h, 2^k w).

Facets: ``key``, ``query``, ``value`` (q/k/v of ``attn.qkv(norm1(x))`` at the chosen block, channels in the
dino-vit-features / official-LiFT **dim-major, head-minor** order by default) and ``token`` (the block's output).
Layers count from 0; -1 is the last block.

Size policy: see :mod:`liftkit.data.transforms` (resize the short side to ``load_size``, round both sides to
multiples of p; never crop).

Example::

    ext = ViTExtractor()                         # dinov2_vits14_imgfocus, last layer, key facet, shipped LiFT
    x = ext.preprocess(Image.open("assets/sample.jpg").convert("RGB"), load_size=224)   # (1, 3, 224, 336)
    low = ext.extract_descriptors(x)             # (1, 384, 16, 24)
    dense = ext.dense_features(x, "lift")        # (1, 384, 32, 48)
    feats = ext.features(x, "low,bilinear,lift,lift2")   # all four from one backbone pass
    feats["lift2"].shape                         # (1, 384, 64, 96)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from PIL import Image

from liftkit.backbones.factory import BackboneInfo, create_backbone
from liftkit.backbones.vit import DenseViT
from liftkit.data.image_io import DEFAULT_MAX_PIXELS, load_image
from liftkit.data.transforms import target_size, to_tensor
from liftkit.data.loader import check_tokens
from liftkit.errors import ConfigError, ImageLoadError  # noqa: F401 (re-exported)
from liftkit.lift.checkpoint import LiftMeta, check_compatible, load_lift, random_lift
from liftkit.lift.jbu import DEFAULT_SIGMA_RANGE, DEFAULT_SIGMA_SPATIAL, jbu
from liftkit.lift.model import LiFT
from liftkit.methods import (  # noqa: F401 (METHODS, parse_method re-exported)
    METHODS, Method, MethodsLike, needs_lift_message, parse_method, parse_methods,
)
from liftkit.specs import BACKBONES, DEFAULT_BACKBONE, BackboneSpec
from liftkit.weights.convert import file_sha256
from liftkit.weights.locations import shipped_lift_path  # noqa: F401 (re-exported)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ViTExtractor:
    """A frozen ViT backbone, one facet at one layer, and optionally the LiFT trained for exactly that.

    Args:
        model_type: backbone name (see ``liftkit.backbones.specs.BACKBONES``); default the offline
            ``dinov2_vits14_imgfocus``.
        layer: block index (0-based; -1 = last).
        facet: ``key`` | ``query`` | ``value`` | ``token``.
        channel_order: ``dim_major`` (official LiFT / dino-vit-features) or ``head_major``.
        backbone_weights: explicit weight file; otherwise found offline-first (see ``liftkit.weights.resolve``).
        offline: never download.
        random_init: random backbone (tests only; never a silent fallback).
        lift_path: ``"auto"`` (the default ``lift_<model_type>.safetensors``: a weights directory's, else the one
            shipped with the package, see :mod:`liftkit.weights.locations`), ``None`` or ``"none"`` (no LiFT) or a
            LiFT file (ours or official). A LiFT trained for another backbone/layer/facet is refused.
        device: torch device string.
        dtype: compute dtype of backbone and LiFT (outputs are float32).
        jbu_sigma_spatial, jbu_sigma_range: the sigmas of the ``jbu`` method (see :mod:`liftkit.lift.jbu`).
        lift_seed: seed of ``lift_path="random"`` (an untrained LiFT for this backbone, the paper's ablation floor).

    Attributes:
        model: :class:`DenseViT`; info: :class:`BackboneInfo`; lift: :class:`LiFT` or None; lift_meta.
    """

    def __init__(
        self,
        model_type: str = DEFAULT_BACKBONE,
        layer: int = -1,
        facet: str = "key",
        channel_order: str = "dim_major",
        backbone_weights: Optional[Union[str, Path]] = None,
        offline: bool = False,
        random_init: bool = False,
        lift_path: Optional[Union[str, Path]] = "auto",
        device: Union[str, torch.device] = "cpu",
        dtype: Union[str, torch.dtype] = torch.float32,
        pretrained_dir: Optional[Path] = None,
        jbu_sigma_spatial: float = DEFAULT_SIGMA_SPATIAL,
        jbu_sigma_range: float = DEFAULT_SIGMA_RANGE,
        lift_seed: int = 0,
    ):
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ConfigError(f"unknown --dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        self.device = torch.device(device)
        self.dtype = dtype
        model, info = create_backbone(
            model_type, Path(backbone_weights) if backbone_weights else None, offline, random_init, pretrained_dir
        )
        self.model: DenseViT = model.to(self.device, self.dtype)
        self.info: BackboneInfo = info
        self.layer = model.resolve_layer(layer)
        if facet not in ("key", "query", "value", "token"):
            raise ConfigError(f"unknown --facet '{facet}'; choose one of: key, query, value, token")
        if channel_order not in ("dim_major", "head_major"):
            raise ConfigError(f"unknown --channel_order '{channel_order}'; choose dim_major or head_major")
        self.facet = facet
        self.channel_order = channel_order
        if not (jbu_sigma_spatial > 0 and jbu_sigma_range > 0):
            raise ConfigError(f"--jbu_sigma_spatial {jbu_sigma_spatial} / --jbu_sigma_range {jbu_sigma_range}: "
                              "both must be positive")
        self.jbu_sigma_spatial = float(jbu_sigma_spatial)
        self.jbu_sigma_range = float(jbu_sigma_range)
        self.lift: Optional[LiFT] = None
        self.lift_meta: Optional[LiftMeta] = None
        self.lift_path: Optional[Path] = None
        self.lift_sha256: str = ""
        if isinstance(lift_path, str) and lift_path.lower() == "none":
            lift_path = None
        if lift_path == "auto":
            lift_path = shipped_lift_path(model_type, pretrained_dir, facet)
        if isinstance(lift_path, str) and lift_path.lower() == "random":
            self.set_random_lift(lift_seed)
        elif lift_path is not None:
            self.load_lift(Path(lift_path))

    # ----------------------------------------------------------------- properties
    @property
    def spec(self) -> BackboneSpec:
        return self.model.spec

    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    # ----------------------------------------------------------------- LiFT
    def load_lift(self, path: Path) -> None:
        """Load a LiFT file and refuse it unless it was trained for this backbone, weights, layer, facet and order."""
        lift, meta = load_lift(path, backbone=self.spec.name)
        check_compatible(meta, self.spec.name, self.info.weights_sha256, self.layer, self.facet,
                         self.channel_order, self.embed_dim, str(path))
        self.lift = lift.to(self.device, self.dtype)
        for p in self.lift.parameters():
            p.requires_grad_(False)
        self.lift_meta = meta
        self.lift_path = Path(path)
        self.lift_sha256 = file_sha256(path)

    def set_random_lift(self, seed: int = 0) -> None:
        """Use an untrained LiFT with seeded random weights (``--lift_path random --seed N``): the same seed gives the
        same weights on every machine."""
        meta = LiftMeta(
            backbone=self.spec.name, backbone_weights_sha256=self.info.weights_sha256, layer=self.layer,
            facet=self.facet, channel_order=self.channel_order, patch_size=self.patch_size, channels=self.embed_dim,
            mean=self.spec.mean, std=self.spec.std, source=f"random(seed={int(seed)})",
        )
        self.lift = random_lift(meta, seed).to(self.device, self.dtype)
        for p in self.lift.parameters():
            p.requires_grad_(False)
        self.lift_meta = meta
        self.lift_path = Path(f"random:seed={int(seed)}")
        self.lift_sha256 = ""

    # ----------------------------------------------------------------- images
    def target_size(self, image_wh: Tuple[int, int], load_size: Optional[int] = None, resize_mode: str = "short"):
        """(H, W) an image of (width, height) ``image_wh`` is resized to (see the size policy)."""
        return target_size(image_wh, self.patch_size, load_size, resize_mode)

    def preprocess(
        self,
        image: Image.Image,
        size: Optional[Sequence[int]] = None,
        load_size: Optional[int] = None,
        resize_mode: str = "short",
    ) -> torch.Tensor:
        """RGB PIL image -> normalised (1, 3, H, W) on the extractor's device.

        Args:
            size: exact (H, W) (multiples of p); otherwise the size policy with ``load_size``/``resize_mode``.
        """
        if size is None:
            size = self.target_size(image.size, load_size, resize_mode)
        elif size[0] % self.patch_size or size[1] % self.patch_size:
            raise ConfigError(f"size {tuple(size)} is not a multiple of the {self.patch_size}-px patch")
        return to_tensor(image, size, self.spec.mean, self.spec.std).to(self.device)

    def load_image(
        self, path: Union[str, Path], load_size: Optional[int] = None, resize_mode: str = "short",
        max_pixels: int = DEFAULT_MAX_PIXELS, max_tokens: Optional[int] = None,
    ) -> Tuple[torch.Tensor, Image.Image]:
        """Read an image file (see :func:`liftkit.data.image_io.load_image`) and preprocess it.

        Args:
            max_tokens: refuse (ImageLoadError) an image whose patch grid h * w would exceed this.
        Returns:
            ((1, 3, H, W) tensor, the upright RGB PIL image).
        """
        img = load_image(path, min_side=self.patch_size, max_pixels=max_pixels)
        size = self.target_size(img.size, load_size, resize_mode)
        check_tokens(path, img.size, size, self.patch_size, max_tokens)
        return self.preprocess(img, size=size), img

    # ----------------------------------------------------------------- features
    @torch.no_grad()
    def extract_descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone facet map.

        Args:
            images: (B, 3, H, W) normalised.
        Returns:
            (B, C, h, w) float32.
        """
        x = images.to(self.device, self.dtype)
        return self.model.forward_facet(x, self.layer, self.facet, self.channel_order).float()

    @torch.no_grad()
    def lift_features(self, feats: torch.Tensor, images: torch.Tensor, iterations: int = 1) -> torch.Tensor:
        """Apply LiFT ``iterations`` times.

        Args:
            feats: (B, C, h, w); images: (B, 3, H, W) the normalised input the features came from.
        Returns:
            (B, C, 2^k h, 2^k w) float32.
        """
        self.require_lift()
        out = self.lift.forward_iterative(feats.to(self.device, self.dtype), images.to(self.device, self.dtype),
                                          iterations)
        return out.float()

    def require_lift(self, methods: Optional[MethodsLike] = None, instead: str = "drop them from --methods") -> None:
        """Raise the one ConfigError (:func:`liftkit.methods.needs_lift_message`) when LiFT is needed (by ``methods``,
        or at all) but none is loaded."""
        names = [m.name for m in parse_methods(methods) if m.needs_lift] if methods is not None else ["lift"]
        if names and self.lift is None:
            raise ConfigError(needs_lift_message(
                names, f"none is loaded for {self.spec.name} (no lift_{self.spec.name}.safetensors is shipped)",
                instead))

    @torch.no_grad()
    def features(self, images: torch.Tensor, methods: MethodsLike,
                 timings: Optional[Dict[str, float]] = None) -> Dict[str, torch.Tensor]:
        """Dense features of every method of a plan (see :mod:`liftkit.methods`), one backbone pass for all.

        ``low``, ``bilinearK``, ``nearestK`` and ``liftK`` share one backbone pass, and the LiFT steps are shared
        along the chain (``lift2`` continues ``lift``); each ``highresK`` needs its own pass on the 2^K x image.
        Each result equals what the method alone computes (``dense_features``), bit for bit.

        Args:
            images: (B, 3, H, W) normalised.
            methods: ``"low,bilinear,lift"``, names, or parsed :class:`Method` objects.
            timings: if given, filled with method name -> seconds of its own computation, the shared backbone pass
                and LiFT steps included (the cost of that method run alone).
        Returns:
            method name -> float32 features, (B, C, h * s, w * s) with s = ``Method.scale``; in plan order.
        """
        plan = parse_methods(methods)
        self.require_lift(plan)
        timer = _Timer(self.device)
        out: Dict[str, torch.Tensor] = {}
        low = t_low = None
        if any(not m.own_backbone_pass for m in plan):
            low, t_low = timer(lambda: self.extract_descriptors(images))
        steps, t_steps = self._lift_chain(low, images, max([m.iterations for m in plan if m.needs_lift], default=0),
                                          timer)
        for m in plan:
            if m.kind == "highres":
                out[m.name], sec = timer(lambda: self.extract_descriptors(F.interpolate(
                    images.to(self.device), scale_factor=m.scale, mode="bilinear", align_corners=False)))
            elif m.kind == "low":
                out[m.name], sec = low, t_low
            elif m.kind == "lift":
                out[m.name], sec = steps[m.iterations - 1], t_low + sum(t_steps[: m.iterations])
            elif m.kind == "jbu":
                out[m.name], sec = timer(lambda: self.jbu_features(low, images, m.scale))
                sec += t_low
            else:
                size = (low.shape[-2] * m.scale, low.shape[-1] * m.scale)
                opts = {"align_corners": False} if m.kind == "bilinear" else {}
                out[m.name], sec = timer(lambda: F.interpolate(low, size=size, mode=m.kind, **opts))
                sec += t_low
            if timings is not None:
                timings[m.name] = sec
        return out

    @torch.no_grad()
    def jbu_features(self, feats: torch.Tensor, images: torch.Tensor, scale: int = 2) -> torch.Tensor:
        """Joint bilateral upsampling of ``feats`` (B, C, h, w) by ``scale``, guided by ``images`` (B, 3, H, W,
        normalised; un-normalised to RGB in [0, 1] here) with this extractor's sigmas -> (B, C, s h, s w)."""
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        guide = (images.to(self.device).float() * std + mean).clamp(0, 1)
        size = (feats.shape[-2] * scale, feats.shape[-1] * scale)
        return jbu(feats.to(self.device), guide, size, self.jbu_sigma_spatial, self.jbu_sigma_range)

    @torch.no_grad()
    def lift_steps(self, feats: torch.Tensor, images: torch.Tensor, iterations: int) -> List[torch.Tensor]:
        """LiFT applied 1..``iterations`` times, every step kept: ``[lift_features(feats, images, k) for k in
        1..iterations]`` (bit for bit) at the cost of the last one alone."""
        self.require_lift()
        return self._lift_chain(feats, images, iterations, _Timer(self.device))[0]

    def _lift_chain(self, low: Optional[torch.Tensor], images: torch.Tensor, k: int, timer: "_Timer"):
        """LiFT applied 1..k times as :meth:`LiFT.forward_iterative` does, every step kept: ([float32 maps],
        [seconds per step])."""
        steps, times = [], []
        if k == 0:
            return steps, times
        feats = low.to(self.device, self.dtype)
        imgs = images.to(self.device, self.dtype)
        for i in range(k):
            if i > 0:
                imgs = F.interpolate(imgs, scale_factor=2, mode="bilinear", align_corners=False)
            feats, sec = timer(lambda: self.lift(feats, imgs))
            steps.append(feats.float())
            times.append(sec)
        return steps, times

    @torch.no_grad()
    def dense_features(self, images: torch.Tensor, method: Union[str, Method] = "lift") -> torch.Tensor:
        """Dense features by one method (see :mod:`liftkit.methods`): ``features(images, [method])[method]``.

        ``low``: backbone grid (B, C, h, w); ``bilinear`` / ``nearest``: that grid upsampled 2x;
        ``highres``: the backbone on the image resized 2x (bilinear), (B, C, 2h, 2w); ``lift``: one LiFT step
        (B, C, 2h, 2w); ``liftK``: K steps, (B, C, 2^K h, 2^K w); ``bilinearK`` / ``highresK`` likewise scale 2^K.
        Several methods of one image: use :meth:`features` (one backbone pass for all).

        Args:
            images: (B, 3, H, W) normalised.
        """
        plan = parse_methods([method])
        return self.features(images, plan)[plan[0].name]

    def describe(self) -> dict:
        """Provenance of the features (strings): backbone, weights, layer, facet, order, patch, LiFT."""
        return {
            "backbone": self.spec.name,
            "backbone_weights": self.info.weights_path,
            "backbone_weights_sha256": self.info.weights_sha256,
            "layer": str(self.layer),
            "facet": self.facet,
            "channel_order": self.channel_order,
            "patch_size": str(self.patch_size),
            "channels": str(self.embed_dim),
            "lift_path": str(self.lift_path or ""),
            "lift_sha256": self.lift_sha256,
        }


def available_backbones() -> Sequence[str]:
    """Names accepted as ``model_type``."""
    return tuple(BACKBONES)


class _Timer:
    """``timer(fn) -> (fn(), seconds)``, CUDA synchronised around the call so the time is the computation's."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn: Callable[[], torch.Tensor]) -> Tuple[torch.Tensor, float]:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0
