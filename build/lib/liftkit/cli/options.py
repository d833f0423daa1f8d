"""The flags every command shares, declared once: one name and one meaning per concept, old spellings as aliases.

* dataset folder: ``--data_root`` (aliases ``--data_path``, ``--dataroot``);
* input images: ``--image_path`` (aliases ``--data_root``, ``--data_path``, ``--dataroot``);
* backbone: ``--model_type --backbone_weights --offline --random_init --layer --facet --channel_order``;
* LiFT file: ``--lift_path auto|none|FILE`` (every command that applies a LiFT);
* methods: ``--methods low,bilinear,lift,...``, parsed once into a plan (:mod:`liftkit.methods`);
* input size: ``--load_size N`` + ``--resize_mode`` (aliases: ``--imsize`` in eval_spair, eval_tokencut and
  train_lift; ``--resize`` in train_lift; ``--short_side N``, ``--square_resize N`` in eval_davis);
* runtime: ``--device auto|cpu|cuda[:N]``, ``--dtype``, ``--quiet`` (no progress bars; alias ``--no_progress`` in
  train_lift), ``--log_level``;
* outputs: ``--output_dir``, ``--output_json``.

``--load_size`` is the size the image is fed at, read by ``--resize_mode``: ``short`` (short side to N, both sides
rounded to multiples of the patch), ``square`` (N x N), ``pad`` (eval_spair: long side to N, zero-padded to an
N x N square), ``crop`` / ``squash`` (train_lift: the S x S training crop, or the whole image squashed to it).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from liftkit.extractor import DTYPES, ViTExtractor, available_backbones
from liftkit.methods import Method, needs_lift_message, parse_methods
from liftkit.specs import DEFAULT_BACKBONE

FACETS = ("key", "query", "value", "token")
CHANNEL_ORDERS = ("dim_major", "head_major")
DATA_ROOT_FLAGS = ("--data_root", "--data_path", "--dataroot")


def add_data_root(parser, required: bool = True, help: str = "dataset folder", **kwargs) -> None:
    """``--data_root`` (aliases ``--data_path``, ``--dataroot``) -> ``args.data_root``."""
    parser.add_argument(*DATA_ROOT_FLAGS, dest="data_root", required=required, metavar="DATA_ROOT",
                        help=f"{help} (aliases: --data_path, --dataroot)", **kwargs)


def add_image_path(parser, default: Sequence[str], help: str) -> None:
    """``--image_path`` (aliases ``--data_root``, ``--data_path``, ``--dataroot``): files, folders or globs."""
    parser.add_argument("--image_path", *DATA_ROOT_FLAGS, dest="image_path", nargs="+", default=list(default),
                        metavar="PATH", help=f"{help} (aliases: --data_root, --data_path, --dataroot)")


def add_backbone_args(parser, layer_help: str = "block index, 0-based; -1 = last (default)") -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument("--model_type", default=DEFAULT_BACKBONE, help=f"backbone: {', '.join(available_backbones())} "
                   f"(default {DEFAULT_BACKBONE})")
    g.add_argument("--backbone_weights", default=None, help="explicit backbone weight file (.pth/.safetensors)")
    g.add_argument("--offline", action="store_true", help="never download weights")
    g.add_argument("--random_init", action="store_true", help="random backbone weights (for tests only)")
    g.add_argument("--layer", type=int, default=-1, help=layer_help)
    g.add_argument("--facet", default="key", choices=FACETS, help="default key")
    g.add_argument("--channel_order", default="dim_major", choices=CHANNEL_ORDERS,
                   help="q/k/v channel order (default dim_major, the official LiFT one)")


def add_lift_args(parser, methods_default: Optional[str] = None) -> None:
    """``--lift_path`` and, when ``methods_default`` is given, ``--methods``."""
    g = parser.add_argument_group("LiFT and methods")
    g.add_argument("--lift_path", default="auto", help="LiFT file (.safetensors or official .pth); 'auto' (default): "
                   "lift_<model_type>.safetensors from $LIFTKIT_WEIGHTS_DIR or pretrained/, else the shipped one; "
                   "'none': no LiFT")
    if methods_default is not None:
        g.add_argument("--methods", default=methods_default,
                       help="comma-separated: low, bilinear, nearest, highres, lift, liftK, bilinearK, highresK "
                            f"(default {methods_default})")


def add_size_args(parser, default: Optional[int], modes: Sequence[str], help: str, imsize_alias: bool = False,
                  davis_aliases: bool = False, resize_alias: bool = False) -> None:
    """``--load_size`` and ``--resize_mode`` (see the module docstring); the aliases where they exist today."""
    g = parser.add_argument_group("input size")
    flags = ["--load_size"] + (["--imsize"] if imsize_alias else [])
    g.add_argument(*flags, dest="load_size", type=int, default=default,
                   help=help + (" (alias: --imsize)" if imsize_alias else ""))
    g.add_argument("--resize_mode", *(["--resize"] if resize_alias else []), dest="resize_mode", choices=tuple(modes),
                   default=modes[0], help=f"default {modes[0]}" + (" (alias: --resize)" if resize_alias else ""))
    if davis_aliases:
        g.add_argument("--short_side", type=int, action=_SizeAlias, mode="short", metavar="N",
                       help="same as --load_size N --resize_mode short")
        g.add_argument("--square_resize", type=int, action=_SizeAlias, mode="square", metavar="N",
                       help="same as --load_size N --resize_mode square (official LiFT protocol)")


class _SizeAlias(argparse.Action):
    """An old size flag: sets ``load_size`` and ``resize_mode`` together."""

    def __init__(self, option_strings, dest, mode: str, **kwargs):
        self.mode = mode
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.load_size, namespace.resize_mode = values, self.mode


def add_runtime_args(parser, device_default: str = "auto", dtype: bool = True,
                     quiet_aliases: Sequence[str] = ()) -> None:
    """``--device``, ``--dtype`` (not for training, which has ``--amp``), ``--quiet``, ``--log_level``."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default=device_default, help="auto (cuda if available; default), cpu, cuda, cuda:1")
    if dtype:
        g.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="compute dtype (outputs are float32)")
    g.add_argument("--quiet", *quiet_aliases, dest="quiet", action="store_true",
                   help="no progress bars" + (f" (alias: {', '.join(quiet_aliases)})" if quiet_aliases else ""))
    g.add_argument("--log_level", choices=("debug", "info", "warning", "error"), default="info")


def add_output_args(parser, output_dir: Optional[str] = None, output_dir_help: str = "output folder",
                    json_help: Optional[str] = "write every figure here (JSON)") -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--output_dir", default=output_dir, help=output_dir_help)
    if json_help is not None:
        g.add_argument("--output_json", default=None, help=json_help)


def lift_path_value(text) -> Optional[str]:
    """``--lift_path`` as ViTExtractor takes it: ``none`` (any case) -> None, else unchanged (``auto`` or a file)."""
    return None if text is None or str(text).lower() == "none" else str(text)


def make_extractor(args, plan: Sequence[Method] = (), use_lift: bool = True,
                   instead: str = "drop them from --methods") -> ViTExtractor:
    """The extractor the shared flags describe; refuses, in one message, a plan that needs a LiFT it cannot have.

    Args:
        plan: the parsed ``--methods`` (checked before and after the model is loaded).
        use_lift: False loads no LiFT whatever ``--lift_path`` says.
    """
    from liftkit.errors import ConfigError

    lift_path = lift_path_value(getattr(args, "lift_path", None)) if use_lift else None
    names = [m.name for m in plan if m.needs_lift]
    if names and lift_path is None:
        raise ConfigError(needs_lift_message(names, "--lift_path is none", instead))
    ext = ViTExtractor(
        model_type=args.model_type, layer=args.layer, facet=args.facet, channel_order=args.channel_order,
        backbone_weights=args.backbone_weights, offline=args.offline, random_init=args.random_init,
        lift_path=lift_path, device=args.device, dtype=getattr(args, "dtype", "float32"),
    )
    if plan:
        ext.require_lift(plan, instead)
    return ext


def describe_extractor(ext: ViTExtractor) -> str:
    """The one log line naming what the features come from."""
    return (f"backbone {ext.spec.name} weights={ext.info.weights_path or 'random'} ({ext.info.origin}) "
            f"sha256={ext.info.weights_sha256[:12]} layer={ext.layer} facet={ext.facet} p={ext.patch_size} "
            f"lift={ext.lift_path or 'none'}")


def methods_plan(text: str):
    """``--methods`` parsed once (ConfigError on an unknown or repeated name)."""
    return parse_methods(text)
