"""eval_upsampler.py (``liftkit-eval-upsampler`` once installed): one benchmark for any upsampler, every quality
probe for a list of methods side by side.

    python eval_upsampler.py --offline --output_dir runs/upsampler                      # defaults, a few minutes
    python eval_upsampler.py --offline --lift_paths plain=runs/a.safetensors,attend=runs/b.safetensors \\
        --probes recon,corr,boundary,spair,davis,tokencut --output_dir runs/ablation

Rows: ``--methods`` (``low``, ``bilinear``, ``nearest``, ``highres``, ``lift``, ``liftK`` with the ``--lift_path``
LiFT) plus every labelled LiFT file of ``--lift_paths label=path,...`` (rows ``label``, and ``label@K`` for
``--lift_iters``), each loaded and checked by ``ViTExtractor.load_lift``. The built-in rows of an image come from one
``ViTExtractor.features`` pass; the file rows apply their LiFT to that pass's backbone map
(:func:`liftkit.eval.upsamplers.row_features`). Probes (``--probes``):

* ``recon``: raw and centred cosine to the backbone's features of the 2x input, pairs S/2->S and S/4->S/2 (S/4->S for
  4x methods), S = ``--recon_imsize``, on the ``--corr_images`` (``liftkit.eval.reconstruction``);
* ``corr``: each ``--corr_images`` image against a seeded warped copy (crop, zoom, mirror, colour jitter), both
  ``--load_size`` squares, a grid of points matched by nearest neighbour, PCK at ``--alphas`` of the image side,
  split mirrored / not (``liftkit.eval.warp_probe``);
* ``boundary``: boundary F of an oracle-labelled k-means of the features against object masks (DAVIS first frames,
  VOC SegmentationObject; ``liftkit.eval.boundary``), images at ``--load_size`` / ``--resize_mode``;
* ``spair``, ``davis``, ``tokencut``: the eval_spair / eval_davis / eval_tokencut commands (their ``main``) with small
  defaults and ``--load_size`` (SPair: the side of its padded square; DAVIS, TokenCut: with ``--resize_mode``),
  their headline numbers folded in.

``--load_size`` (alias ``--imsize``) is the input size of every probe but ``recon`` (which has ``--recon_imsize``).
Writes ``<output_dir>/results.json`` (with the provenance ``run``) and ``results.md`` and prints the table; every
number with its sample size. Exit status 0, 1 if a sub-evaluation failed (listed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from liftkit.cli import options
from liftkit.cli.runner import ItemFailures, Run, configure_logging, run_command
from liftkit.data.image_io import list_images, load_image
from liftkit.data.masks import davis_first_frames, voc_object_masks
from liftkit.errors import ConfigError
from liftkit.eval import boundary as bnd
from liftkit.eval import reconstruction as rc
from liftkit.eval import warp_probe as wp
from liftkit.eval.upsampler_report import jsonable, render
from liftkit.eval.upsamplers import Row, check_unique, parse_lift_paths, row_features
from liftkit.specs import get_spec
from liftkit.train.data import find_images, screen_images, split_train_val
from liftkit.io.outputs import write_text_atomic

COMMAND = "eval_upsampler"
CHECKOUT = Path(__file__).resolve().parents[2]
PROBES = ("recon", "corr", "boundary", "spair", "davis", "tokencut")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_upsampler.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    options.add_data_root(d, required=False, default=CHECKOUT.parent / "shared" / "data", type=Path,
                          help="holds COCO/, DAVIS/, VOC2007/, SPair-71k/, imagenet-sample-images/ (default "
                               "../shared/data next to the checkout)")
    d.add_argument("--corr_images", default="coco", help="comma-separated image sets for recon and corr: coco (the "
                   "80 COCO train2017 images), imagenet_val (the 30 images held out of LiFT's training), or folders")
    d.add_argument("--boundary_sets", default="davis,voc07",
                   help="comma-separated: davis (first frames), voc07 / voc12 (SegmentationObject), or VOC folders")
    d.add_argument("--limit", type=int, default=None, help="at most N images per set (evenly spread)")
    d.add_argument("--seed", type=int, default=0, help="seed of the warps and of k-means (default 0)")
    options.add_backbone_args(p)
    options.add_lift_args(p, "low,bilinear,highres,lift,lift2")
    g = p.add_argument_group("LiFT and methods")
    g.add_argument("--lift_paths", default="", help="more LiFT files as rows: label=path,label2=path2")
    g.add_argument("--lift_iters", default="1", help="iterations of each --lift_paths file (rows label, label@K)")
    options.add_size_args(p, 224, ("short", "square"), "input size of every probe but recon (default 224): corr: "
                          "side of both square views; boundary, davis, tokencut: short side (--resize_mode short) "
                          "or square side (square); spair: side of its padded square; a multiple of the patch",
                          imsize_alias=True)
    e = p.add_argument_group("probes")
    e.add_argument("--probes", default="recon,corr,boundary,spair", help=f"comma-separated of {', '.join(PROBES)}")
    e.add_argument("--recon_imsize", type=int, default=448, help="recon: S (a multiple of 4 patches; its own size, "
                   "not --load_size: the targets are the backbone's maps of the S and S/2 images)")
    e.add_argument("--grid", type=int, default=12, help="corr: G x G query points per pair")
    e.add_argument("--min_scale", type=float, default=0.5, help="corr: smallest crop side (zoom up to 1/x)")
    e.add_argument("--match", default="cell", choices=wp.MATCH_MODES, help="corr: best feature cell or pixel")
    e.add_argument("--alphas", default="0.01,0.02,0.03,0.05,0.1", help="corr: PCK thresholds (fractions of side)")
    e.add_argument("--boundary_k", default="4,8,16", help="boundary: k-means cluster counts (F is their mean)")
    e.add_argument("--bound_th", type=float, default=0.008, help="boundary tolerance: fraction of diagonal or px")
    e.add_argument("--davis_max_frames", type=int, default=10, help="davis: frames per sequence (>= 3)")
    e.add_argument("--tokencut_dataset", default="voc07", choices=("voc07", "voc12", "coco"))
    options.add_output_args(p, None, "results.json, results.md and the sub-evaluations' files (required)",
                            json_help=None)
    options.add_runtime_args(p)
    return p


def _csv(text: str) -> List[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _numbers(text: str, flag: str, kind=float, lo=None, hi=None) -> List:
    try:
        vals = [kind(t) for t in _csv(text)]
    except ValueError:
        raise ConfigError(f"--{flag} '{text}': give comma-separated {kind.__name__}s") from None
    if not vals or any((lo is not None and v < lo) or (hi is not None and v > hi) for v in vals):
        raise ConfigError(f"--{flag} '{text}': every value must be in [{lo}, {hi}]")
    return vals


def check_args(args) -> dict:
    """Validate every flag before the backbone is loaded (one-line ConfigError each); returns the parsed lists."""
    probes = _csv(args.probes)
    bad = [p for p in probes if p not in PROBES]
    if not probes or bad:
        raise ConfigError(f"--probes '{args.probes}': choose from {', '.join(PROBES)}")
    plan = options.methods_plan(args.methods) if _csv(args.methods) else ()
    files = parse_lift_paths(args.lift_paths)
    for label, path in files:
        if not Path(path).is_file():
            raise ConfigError(f"--lift_paths: the file of '{label}', '{path}', does not exist")
    iters = _numbers(args.lift_iters, "lift_iters", int, 1, 4)
    if not plan and not files:
        raise ConfigError("--methods is empty and no --lift_paths given: nothing to compare")
    p = get_spec(args.model_type).patch_size
    if args.load_size < p or args.load_size % p:
        raise ConfigError(f"--load_size (--imsize) {args.load_size}: must be a positive multiple of the {p}-px patch")
    if args.recon_imsize % (4 * p):
        raise ConfigError(f"--recon_imsize {args.recon_imsize}: must be a multiple of 4 x {p} px (S/4 on the grid)")
    if args.grid < 1 or not 0 < args.min_scale <= 1 or args.bound_th <= 0:
        raise ConfigError("--grid must be >= 1, --min_scale in (0, 1], --bound_th > 0")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be at least 1")
    if args.davis_max_frames < 3:
        raise ConfigError(f"--davis_max_frames {args.davis_max_frames}: must be at least 3")
    if args.output_dir is None:
        raise ConfigError("--output_dir is required (results.json, results.md and the sub-evaluations' files)")
    args.output_dir = Path(args.output_dir)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise ConfigError(f"--output_dir '{args.output_dir}' is a file")
    if not args.data_root.is_dir():
        raise ConfigError(f"--data_root '{args.data_root}' is not a folder")
    return {"probes": probes, "plan": plan, "files": files, "iters": iters,
            "alphas": tuple(_numbers(args.alphas, "alphas", float, 1e-4, 1.0)),
            "ks": tuple(_numbers(args.boundary_k, "boundary_k", int, 2, 64))}


def _spread(paths: List[Path], limit: Optional[int]) -> List[Path]:
    n = len(paths)
    return paths if limit is None or limit >= n else [paths[i * n // limit] for i in range(limit)]


def image_sets(args) -> Dict[str, List[Path]]:
    """--corr_images -> {set name: image paths}."""
    out = {}
    for name in _csv(args.corr_images):
        if name == "coco":
            paths = list_images([args.data_root / "COCO" / "train2017"])
        elif name == "imagenet_val":  # the shipped LiFT's held-out images (train_lift.py defaults: 5 %, seed 0)
            usable, _ = screen_images(find_images(args.data_root / "imagenet-sample-images"), 14)
            paths = split_train_val(usable, 0.05, 0)[1]
        else:
            paths = list_images([Path(name)]) if Path(name).is_dir() else []
        if not paths:
            raise ConfigError(f"--corr_images '{name}': no images (use coco, imagenet_val or an image folder)")
        out[name] = _spread(sorted(paths), args.limit)
    if not out:
        raise ConfigError("--corr_images is empty; give e.g. coco or an image folder")
    return out


def mask_sets(args) -> list:
    """--boundary_sets -> [MaskedImage]."""
    items = []
    for name in _csv(args.boundary_sets):
        if name == "davis":
            got = davis_first_frames(args.data_root / "DAVIS")
        elif name in ("voc07", "voc12"):
            got = voc_object_masks(args.data_root / f"VOC20{name[3:]}" / "VOCdevkit" / f"VOC20{name[3:]}", name)
        elif Path(name, "SegmentationObject").is_dir():
            got = voc_object_masks(Path(name), Path(name).name)
        else:
            raise ConfigError(f"--boundary_sets '{name}': use davis, voc07, voc12 or a VOC folder with "
                              "SegmentationObject/")
        items += got[:args.limit] if args.limit else got
    if not items:
        raise ConfigError("--boundary_sets is empty; give e.g. davis,voc07")
    return items


def build_rows(ext, parsed: dict) -> List[Row]:
    """The rows: built-ins (lift rows use ``ext``'s LiFT), then each labelled file on a view sharing the backbone."""
    rows = [Row.builtin(m) for m in parsed["plan"]]
    for label, path in parsed["files"]:
        view = copy.copy(ext)  # shares the backbone; its own LiFT
        view.load_lift(Path(path))
        rows += [Row(label if k == 1 else f"{label}@{k}", None, k, view, str(path)) for k in parsed["iters"]]
    check_unique(rows)
    return rows


def _progress(log, args, what: str, k: int, n: int) -> None:
    if not args.quiet and ((k + 1) % 20 == 0 or k + 1 == n):
        log.info(f"{what}: {k + 1}/{n}")


def run_recon(ext, rows, paths, args, log) -> dict:
    """Pass 1: the pyramid's backbone maps of every image (targets and level means); pass 2: every row on both pairs
    (``row_features`` on the S/2 and S/4 images: one backbone pass for the rows of a scale)."""
    items = []
    for k, path in enumerate(paths):
        img = load_image(path, min_side=ext.patch_size)
        x = ext.preprocess(wp.centre_square(*img.size, args.recon_imsize).render(img), size=(args.recon_imsize,) * 2)
        items.append(rc.pyramid_features(ext.extract_descriptors, x))
        _progress(log, args, "recon pass 1", k, len(paths))
    means = rc.level_means(items)
    acc = rc.ReconAccumulator()
    scales = {r.label: r.scale for r in rows}

    def predict(low, img, scale):  # low (the pass-1 map of img) is recomputed by the one dispatch, ext.features
        return row_features(ext, img.to(ext.device), [r for r in rows if r.scale == scale])

    for item in items:
        rc.score_item(item, means, predict, scales, acc)
    return {"images": len(items), "imsize": args.recon_imsize, "per_method": acc.summary()}


def run_corr(ext, rows, paths, args, alphas, log) -> tuple:
    acc = {r.label: wp.WarpPCK(alphas=alphas) for r in rows}
    grids, size = {}, args.load_size
    for k, path in enumerate(paths):
        img = load_image(path, min_side=ext.patch_size)
        fs = wp.probe_image(img, size, wp.pair_rng(args.seed, k), lambda view: {m: f[0] for m, f in row_features(
            ext, ext.preprocess(view, size=(size, size)), rows).items()}, args.grid, acc, args.match, args.min_scale)
        grids = {m: "x".join(str(s) for s in f.shape[-2:]) for m, f in fs.items()}
        _progress(log, args, "corr", k, len(paths))
    return {"images": len(paths), "imsize": size, "grid": args.grid, "match": args.match,
            "min_scale": args.min_scale, "alphas": list(alphas),
            "per_method": {m: a.summary() for m, a in acc.items()}}, grids


def run_boundary(ext, rows, items, args, ks) -> dict:
    per: Dict[str, list] = {r.label: [] for r in rows}
    for item in items:
        x, _ = ext.load_image(item.image_path, load_size=args.load_size, resize_mode=args.resize_mode)
        for m, f in row_features(ext, x, rows).items():
            s = bnd.boundary_scores(f[0], item.foreground, item.void, ks, args.bound_th, args.seed)
            per[m].append({"name": item.name, **s})
    out = {}
    for m, recs in per.items():
        out[m] = {"images": len(recs), "f_mean": sum(r["f_mean"] for r in recs) / len(recs),
                  "j_mean": sum(r["j_mean"] for r in recs) / len(recs),
                  "f": {str(k): sum(r["f"][k] for r in recs) / len(recs) for k in ks},
                  "j": {str(k): sum(r["j"][k] for r in recs) / len(recs) for k in ks}, "per_image": recs}
    return {"images": len(items), "sets": _csv(args.boundary_sets), "ks": list(ks), "bound_th": args.bound_th,
            "per_method": out}


def _sub_runs(rows: List[Row], ext) -> list:
    """[(--lift_path, [(the command's method name, our row label)])]: built-ins in one run, each LiFT file in its own."""
    runs = []
    builtin = [(r.label, r.label) for r in rows if r.method is not None]
    if builtin:
        runs.append((str(ext.lift_path) if ext.lift_path else "none", builtin))
    by_file: Dict[str, list] = {}
    for r in rows:
        if r.method is None:
            by_file.setdefault(r.source, []).append(("lift" if r.k == 1 else f"lift{r.k}", r.label))
    return runs + list(by_file.items())


def _headline(probe: str, r: dict, name: str) -> dict:
    if probe == "spair":
        pck = r["methods"][name]["pck"]["mean_over_categories"]
        return {"pck@0.05": pck["pck@0.05"], "pck@0.1": pck["pck@0.1"], "n": r["dataset"]["keypoints"]}
    if probe == "davis":
        g = r["methods"][name]
        return {**{k: g["global"][k] for k in ("J&F-Mean", "J-Mean", "F-Mean")}, "n": len(g["per_sequence"])}
    return {"corloc": r["methods"][name]["corloc"], "n": r["methods"][name]["num_images"]}


def sub_argv(probe: str, args, i: int) -> list:
    """The sub-command's own flags (the shared names: --data_root, --load_size, --resize_mode) for run ``i``."""
    dr, size = args.data_root, str(args.load_size)
    if probe == "spair":  # eval_spair has one size mode, pad: --load_size is the side of the padded square
        return ["--data_root", str(dr / "SPair-71k"), "--load_size", size, "--quiet"]
    if probe == "davis":
        return ["--data_root", str(dr / "DAVIS"), "--output_dir", str(args.output_dir / f"davis_{i}"), "--overwrite",
                "--max_frames", str(args.davis_max_frames), "--load_size", size, "--resize_mode", args.resize_mode,
                "--quiet"]
    ds = args.tokencut_dataset
    root = dr / "COCO" / "train2017" if ds == "coco" else dr / f"VOC20{ds[3:]}" / "VOCdevkit" / f"VOC20{ds[3:]}"
    argv = ["--dataset", ds, "--data_root", str(root), "--load_size", size, "--resize_mode", args.resize_mode]
    if ds == "coco":
        argv += ["--annotations", str(dr / "COCO" / "annotations" / "instances_train2017.json")]
    return argv


def run_sub(probe: str, args, rows: List[Row], ext) -> dict:
    """eval_spair / eval_davis / eval_tokencut (their ``main``) with small defaults, once per LiFT file; their
    headline numbers."""
    from liftkit.cli import eval_davis, eval_spair, eval_tokencut

    mod = {"spair": eval_spair, "davis": eval_davis, "tokencut": eval_tokencut}[probe]
    common = ["--model_type", args.model_type, "--layer", str(args.layer), "--facet", args.facet, "--channel_order",
              args.channel_order, "--device", str(ext.device), "--dtype", args.dtype, "--log_level", args.log_level] \
        + (["--offline"] if args.offline else []) + (["--random_init"] if args.random_init else []) \
        + (["--backbone_weights", str(args.backbone_weights)] if args.backbone_weights else [])
    per, cmds, errors, per_what = {}, [], [], ""
    for i, (lift, pairs) in enumerate(_sub_runs(rows, ext)):
        out = args.output_dir / f"{probe}_{i}.json"
        argv = sub_argv(probe, args, i) + common + ["--methods", ",".join(n for n, _ in pairs), "--lift_path", lift,
                                                    "--output_json", str(out)]
        cmds.append(f"python {mod.COMMAND}.py " + " ".join(argv))
        try:
            code = mod.main(argv)
        finally:
            configure_logging(COMMAND, args.log_level)  # the sub-command configured the logger for itself
        if not out.is_file():
            errors.append(f"{mod.COMMAND} run {i} exited {code} without results")
            continue
        r = json.loads(out.read_text())
        for name, label in pairs:
            per[label] = _headline(probe, r, name)
        if code != 0:
            errors.append(f"{mod.COMMAND} run {i} exited {code}")
        side = f"{'short' if args.resize_mode == 'short' else 'square'} side {args.load_size}"
        if probe == "tokencut":
            per_what = f"CorLoc, {args.tokencut_dataset}, tau {r['tau']:g}, {side}"
        elif probe == "spair":
            per_what = f"{r['dataset']['evaluated_pairs']} pairs, load_size {args.load_size}; PCK mean over categories"
        else:
            per_what = f"first {args.davis_max_frames} frames, {side}"
    return {"what": per_what, "commands": cmds, "per_method": per, "error": "; ".join(errors)}


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(COMMAND, build_parser(), argv, _run)


def _run(args, run: Run) -> None:
    log = run.log
    parsed = check_args(args)
    probes = parsed["probes"]
    paths = image_sets(args) if {"recon", "corr"} & set(probes) else {}
    masks = mask_sets(args) if "boundary" in probes else []
    ext = options.make_extractor(args, parsed["plan"])
    log.info(options.describe_extractor(ext))
    rows = build_rows(ext, parsed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    all_paths = [q for ps in paths.values() for q in ps]
    res = {"run": run.info,
           "config": {**run.info["args"], "layer": ext.layer, "device": str(ext.device), "extractor": ext.describe(),
                      "corr_sets": {k: len(v) for k, v in paths.items()}},
           "methods": [{"label": r.label, "kind": r.kind, "k": r.iterations, "scale": r.scale,
                        "source": r.source or (str(ext.lift_path) if r.kind == "lift" else "")} for r in rows],
           "seconds": {}}
    errors = []
    with torch.no_grad():
        for probe in probes:
            t0 = time.perf_counter()
            if probe == "recon":
                res["recon"] = run_recon(ext, rows, all_paths, args, log)
            elif probe == "corr":
                res["corr"], res["grids"] = run_corr(ext, rows, all_paths, args, parsed["alphas"], log)
            elif probe == "boundary":
                res["boundary"] = run_boundary(ext, rows, masks, args, parsed["ks"])
            else:
                with contextlib.redirect_stdout(sys.stderr):  # their tables are not ours: stdout is the report
                    res[probe] = run_sub(probe, args, rows, ext)
                if res[probe].get("error"):
                    errors.append(f"{probe}: {res[probe]['error']}")
            res["seconds"][probe] = round(time.perf_counter() - t0, 1)
            log.info(f"{probe}: {res['seconds'][probe]} s")
    text = render(res)
    write_text_atomic(args.output_dir / "results.json", json.dumps(jsonable(res), indent=1))
    write_text_atomic(args.output_dir / "results.md", text)
    print(text)
    log.info(f"wrote {args.output_dir / 'results.json'} and results.md")
    if errors:
        raise ItemFailures(f"{len(errors)} sub-evaluation(s) failed", errors)


if __name__ == "__main__":
    raise SystemExit(main())
