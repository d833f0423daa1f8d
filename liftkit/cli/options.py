"""The flags every command shares, declared once: one name and one meaning per concept, old spellings as aliases.

* dataset folder: ``--data_root`` (aliases ``--data_path``, ``--dataroot``);
* input images: ``--image_path`` (aliases ``--data_root``, ``--data_path``, ``--dataroot``);
* backbone: ``--model_type --backbone_weights --offline --random_init --layer --facet --channel_order``;
* LiFT file: ``--lift_path auto|none|random|FILE`` (every command that applies a LiFT; ``random``: an untrained LiFT
  seeded by ``--seed``); JBU sigmas ``--jbu_sigma_spatial``, ``--jbu_sigma_range`` (the ``jbu`` method);
* methods: ``--methods low,bilinear,lift,...``, parsed once into a plan (:mod:`liftkit.methods`);
* input size: ``--load_size N`` + ``--resize_mode`` (aliases: ``--imsize`` in eval_spair, eval_tokencut and
  train_lift; ``--resize`` in train_lift; ``--short_side N``, ``--square_resize N`` in eval_davis);
* runtime: ``--device auto|cpu|cuda[:N]``, ``--dtype``, ``--quiet`` (no progress bars; alias ``--no_progress`` in
  train_lift), ``--log_level``;
* outputs: ``--output_dir``, ``--output_json`` (checked before anything is loaded: liftkit.io.outputs);
* limits: ``--max_memory_gb`` (every command, :mod:`liftkit.memory`), ``--skip_bad`` (evaluations, one meaning).

``--load_size`` is the size the image is fed at, read by ``--resize_mode``: ``short`` (short side to N, both sides
rounded to multiples of the patch), ``square`` (N x N), ``pad`` (eval_spair: long side to N, zero-padded to an
N x N square), ``crop`` / ``squash`` (train_lift: the S x S training crop, or the whole image squashed to it).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Optional, Sequence

from liftkit.extractor import DTYPES, ViTExtractor, available_backbones
from liftkit.lift.jbu import DEFAULT_SIGMA_RANGE, DEFAULT_SIGMA_SPATIAL
from liftkit.methods import Method, needs_lift_message, parse_methods
from liftkit.memory import MAX_MEMORY_HELP, check_budget, default_max_memory_gb, plan_tensors
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
    """``--lift_path``, ``--seed`` (unless the command declares its own), the JBU sigmas and, when
    ``methods_default`` is given, ``--methods``."""
    g = parser.add_argument_group("LiFT and methods")
    g.add_argument("--lift_path", default="auto", help="LiFT file (.safetensors or official .pth under any name: "
                   "its backbone is then --model_type); 'auto' (default): lift_<model_type>.safetensors from "
                   "$LIFTKIT_WEIGHTS_DIR or pretrained/, else the shipped one; 'none': no LiFT; 'random': an "
                   "untrained LiFT seeded by --seed (the paper's random-LiFT ablation)")
    if "--seed" not in parser._option_string_actions:
        g.add_argument("--seed", type=int, default=0, help="seed of --lift_path random (default 0)")
    g.add_argument("--jbu_sigma_spatial", type=float, default=DEFAULT_SIGMA_SPATIAL,
                   help=f"jbu method: spatial sigma in backbone cells (default {DEFAULT_SIGMA_SPATIAL})")
    g.add_argument("--jbu_sigma_range", type=float, default=DEFAULT_SIGMA_RANGE,
                   help=f"jbu method: range sigma on RGB in [0, 1] (default {DEFAULT_SIGMA_RANGE})")
    if methods_default is not None:
        g.add_argument("--methods", default=methods_default,
                       help="comma-separated: low, bilinear, nearest, highres, jbu, lift, liftK, bilinearK, highresK, "
                            f"jbuK (default {methods_default})")


def add_size_args(parser, default: Optional[int], modes: Sequence[str], help: str, imsize_alias: bool = False,
                  davis_aliases: bool = False, resize_alias: bool = False, imsize_square: bool = False,
                  sweep: bool = False) -> None:
    """``--load_size`` and ``--resize_mode`` (see the module docstring); the aliases where they exist today.

    ``imsize_square``: ``--imsize N`` with the official LiFT scripts' meaning in eval_davis, eval_tokencut and
    eval_visualize_feats, the N x N square (``--load_size N --resize_mode square``).
    ``sweep``: the evaluations' input-size sweep: ``--sweep_sizes 56,112,224,448``, or a comma list given to
    ``--load_size``/``--imsize`` (``args.sweep_sizes``: the list, or None for one size).
    """
    g = parser.add_argument_group("input size")
    flags = ["--load_size"] + (["--imsize"] if imsize_alias else [])
    size_kw = {"type": _size_list, "action": _SizeAlias, "mode": None} if sweep else {"type": int}
    g.add_argument(*flags, dest="load_size", default=default, **size_kw,
                   help=help + (" (alias: --imsize)" if imsize_alias else "")
                   + ("; a comma list (56,112,224,448) runs a sweep" if sweep else ""))
    if sweep:
        parser.set_defaults(sweep_sizes=None)
        g.add_argument("--sweep_sizes", type=_size_list, action=_SizeAlias, mode=None, metavar="N,N,...",
                       help="run the evaluation once per input size (one row per size in the sweep table), "
                            "e.g. 56,112,224,448 (the paper's input-size ablation)")
    g.add_argument("--resize_mode", *(["--resize"] if resize_alias else []), dest="resize_mode", choices=tuple(modes),
                   default=modes[0], help=f"default {modes[0]}" + (" (alias: --resize)" if resize_alias else ""))
    if imsize_square:
        g.add_argument("--imsize", type=_size_list if sweep else int, action=_SizeAlias, mode="square", metavar="N",
                       help="the official scripts' --imsize: same as --load_size N --resize_mode square")
    if davis_aliases:
        g.add_argument("--short_side", type=int, action=_SizeAlias, mode="short", metavar="N",
                       help="same as --load_size N --resize_mode short")
        g.add_argument("--square_resize", type=int, action=_SizeAlias, mode="square", metavar="N",
                       help="same as --load_size N --resize_mode square (official LiFT protocol)")


def _size_list(text: str):
    """``"224"`` -> [224]; ``"56,112,224"`` -> [56, 112, 224] (positive integers)."""
    try:
        sizes = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size or a comma list of sizes") from None
    if not sizes or any(v < 0 for v in sizes):
        raise argparse.ArgumentTypeError(f"'{text}': sizes must be non-negative integers")
    return sizes


class _SizeAlias(argparse.Action):
    """A size flag: sets ``load_size`` (and ``resize_mode`` unless mode is None) together; a list value (sweep flags)
    sets ``load_size`` to its first size and ``sweep_sizes`` to the list when it has several."""

    def __init__(self, option_strings, dest, mode: Optional[str], **kwargs):
        self.mode = mode
        keep = dest == "load_size"
        default = kwargs.pop("default", None)
        super().__init__(option_strings, dest=dest if keep else argparse.SUPPRESS,
                         default=default if keep else argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if isinstance(values, list):
            namespace.sweep_sizes = values if len(values) > 1 else None
            values = values[0]
        namespace.load_size = values
        if self.mode is not None:
            namespace.resize_mode = self.mode


PROTOCOLS = ("ours", "official")


def add_protocol_arg(parser, help: str) -> None:
    """``--protocol ours|official``: our defaults, or the official LiFT pipeline where they deliberately differ
    (docs/reproducing.md lists each difference)."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default="ours",
                        help=f"default ours; official: {help}; a flag given explicitly keeps its value (logged)")


def official_methods(args) -> dict:
    """What the official scripts evaluate: LiFT features alone when ``--lift_path`` is given, the backbone alone
    otherwise (official default: no LiFT). Entries for :func:`apply_protocol`."""
    if "lift_path" in getattr(args, "_given", set()) and lift_path_value(args.lift_path) is not None:
        return {"methods": "lift"}
    return {"lift_path": "none", "methods": "low"}


def given_dests(parser: argparse.ArgumentParser, argv) -> set:
    """The ``args`` entries the command line sets explicitly (aliases included), whatever their value: ``argv`` is
    parsed again into a namespace pre-filled with a marker, which argparse's defaults never overwrite."""
    marker = object()
    dests = {a.dest for a in parser._actions if a.dest != argparse.SUPPRESS} | set(parser._defaults)
    ns = argparse.Namespace(**{d: marker for d in dests})
    parser.parse_known_args(argv, namespace=ns)
    return {k for k, v in vars(ns).items() if v is not marker}


def apply_protocol(args, official: dict, log=None) -> dict:
    """Under ``--protocol official`` set every ``args`` entry of ``official`` (dest -> official value) that the
    command line left alone; an explicit flag wins (a warning names it when it differs from the official value).
    Returns the entries changed. ``args._given`` (set by the runner) holds the explicit entries."""
    if getattr(args, "protocol", "ours") != "official":
        return {}
    given = getattr(args, "_given", set())
    changed = {}
    for dest, value in official.items():
        if dest in given:
            if getattr(args, dest, None) != value and log is not None:
                log.warning(f"--protocol official: keeping the explicit {dest}={getattr(args, dest)!r} "
                            f"(official: {value!r})")
        elif getattr(args, dest, None) != value:
            setattr(args, dest, value)
            changed[dest] = value
    if log is not None:
        log.info("--protocol official: " + (", ".join(f"{k}={v!r}" for k, v in changed.items()) or "no change"))
    return changed


def with_protocol(args, official_settings, run):
    """``args`` after :func:`apply_protocol` with ``official_settings(args)`` (a callable: it may read the explicit
    flags), the run's recorded arguments updated; for the ``run_command`` bodies."""
    if getattr(args, "protocol", "ours") == "official":
        from liftkit.cli.runner import resolved_args

        apply_protocol(args, official_settings(args), run.log)
        run.info["args"] = resolved_args(args)
    return args


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
    g.add_argument("--max_memory_gb", type=float, default=default_max_memory_gb(), help=MAX_MEMORY_HELP)


def add_output_args(parser, output_dir: Optional[str] = None, output_dir_help: str = "output folder",
                    json_help: Optional[str] = "write every figure here (JSON)") -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--output_dir", default=output_dir, help=output_dir_help)
    if json_help is not None:
        g.add_argument("--output_json", default=None, help=json_help)


SKIP_BAD_HELP = ("skip bad items (malformed annotation, unreadable image, broken pair or sequence), count them in "
                 "the summary and in the JSON (num_skipped, skipped: [{item, reason}]) and exit 1 at the end; "
                 "default: a bad annotation stops the run (exit 2)")


def add_skip_bad(group) -> None:
    """``--skip_bad``: the same meaning and exit code in every evaluation script (see :data:`SKIP_BAD_HELP`)."""
    group.add_argument("--skip_bad", action="store_true", help=SKIP_BAD_HELP)


def skipped_json(skipped) -> dict:
    """``{"num_skipped": n, "skipped": [{"item", "reason"}]}`` from (item, reason) pairs or ``"item: reason"`` text."""
    rows = []
    for s in skipped:
        item, reason = s if isinstance(s, tuple) else (str(s).split(": ", 1) + [""])[:2]
        rows.append({"item": str(item), "reason": str(reason)})
    return {"num_skipped": len(rows), "skipped": rows}


def skipped_failures(skipped) -> "ItemFailures":
    """The exit-1 report of the skipped items (raised at the end of a run with --skip_bad)."""
    from liftkit.cli.runner import ItemFailures

    rows = skipped_json(skipped)["skipped"]
    return ItemFailures(f"{len(rows)} item(s) skipped (--skip_bad)", [f"{r['item']}: {r['reason']}" for r in rows])


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
        jbu_sigma_spatial=getattr(args, "jbu_sigma_spatial", DEFAULT_SIGMA_SPATIAL),
        jbu_sigma_range=getattr(args, "jbu_sigma_range", DEFAULT_SIGMA_RANGE), lift_seed=getattr(args, "seed", 0) or 0,
    )
    if getattr(args, "protocol", "ours") == "official":
        _official_normalisation(ext, args.model_type)
    if plan:
        ext.require_lift(plan, instead)
    return ext


def _official_normalisation(ext: ViTExtractor, model_type: str) -> None:
    """The official scripts' mean/std (ImageNet's for ``dino*`` names, 0.5 otherwise) in the extractor's spec."""
    from liftkit.data.transforms import official_normalisation

    set_normalisation(ext, *official_normalisation(model_type))


def set_normalisation(ext: ViTExtractor, mean, std) -> None:
    """Make ``ext`` normalise its inputs with ``mean``/``std`` (``--protocol official``)."""
    import dataclasses

    if (tuple(ext.spec.mean), tuple(ext.spec.std)) != (tuple(mean), tuple(std)):
        ext.model.spec = dataclasses.replace(ext.spec, mean=tuple(mean), std=tuple(std))


def describe_extractor(ext: ViTExtractor) -> str:
    """The one log line naming what the features come from."""
    return (f"backbone {ext.spec.name} weights={ext.info.weights_path or 'random'} ({ext.info.origin}) "
            f"sha256={ext.info.weights_sha256[:12]} layer={ext.layer} facet={ext.facet} p={ext.patch_size} "
            f"lift={ext.lift_path or 'none'}" + (f" [{ext.lift_meta.source}]" if ext.lift_meta is not None else ""))


def check_memory(args, spec, height: int, width: int, plan: Sequence[Method], flags: dict,
                 batch: int = 1, item: str = "", extra: Sequence = ()) -> None:
    """Refuse (MemoryBudgetError: exit 2 up front, or one failed item) a (batch, 3, height, width) input to the
    backbone ``spec`` (a BackboneSpec: ``ext.spec``, or ``get_spec(--model_type)`` before loading) whose largest
    predicted tensor (:mod:`liftkit.memory`) exceeds ``--max_memory_gb``; ``flags`` names the flags to change."""
    from liftkit.errors import ConfigError

    budget = getattr(args, "max_memory_gb", None)
    if budget is None:
        budget = default_max_memory_gb()
    if not budget > 0:
        raise ConfigError(f"--max_memory_gb {budget}: must be positive")
    tensors = plan_tensors(spec.embed_dim, spec.num_heads, spec.patch_size, height, width, plan, batch,
                           getattr(spec, "num_prefix_tokens", 1))
    check_budget(list(tensors) + list(extra), budget, flags, item, batch)


def min_input_side(size: int, patch: int) -> int:
    """The smallest side an input of ``--load_size size`` can have (short side rounded to the patch)."""
    return max(patch, (size // patch) * patch)


def methods_plan(text: str):
    """``--methods`` parsed once (ConfigError on an unknown or repeated name)."""
    return parse_methods(text)


@contextlib.contextmanager
def torchrun_group(args, log):
    """Under torchrun: join the process group (gloo on CPU, NCCL on CUDA), pin ``--device cuda`` to
    ``cuda:LOCAL_RANK`` and quiet the info lines of ranks other than 0; leave the group on exit. A no-op for one
    process. Yields the :class:`~liftkit.train.distributed.DistContext`."""
    import logging

    from liftkit.train.distributed import init_distributed, shutdown_distributed

    use_cuda = str(args.device).startswith("cuda")
    ctx = init_distributed(use_cuda=use_cuda)
    if ctx.enabled and use_cuda:
        import torch

        if args.device == "cuda":
            args.device = f"cuda:{ctx.local_rank}"
        torch.cuda.set_device(torch.device(args.device))  # NCCL collectives use the current device
    if not ctx.is_main:
        log.setLevel(logging.WARNING)
    try:
        yield ctx
    finally:
        shutdown_distributed(ctx)
