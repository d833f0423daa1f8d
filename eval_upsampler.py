#!/usr/bin/env python
"""One benchmark for any upsampler: every quality probe, for a list of methods side by side.

    python eval_upsampler.py --offline --output_dir runs/upsampler                      # defaults, a few minutes
    python eval_upsampler.py --offline --lift_paths plain=runs/a.safetensors,attend=runs/b.safetensors \\
        --probes recon,corr,boundary,spair,davis,tokencut --output_dir runs/ablation

Rows: ``--methods`` (``low``, ``bilinear``, ``nearest``, ``highres``, ``lift``, ``liftK`` with the ``--lift_path``
LiFT) plus every labelled LiFT file of ``--lift_paths label=path,...`` (rows ``label``, and ``label@K`` for
``--lift_iters``), each loaded and checked by ``ViTExtractor.load_lift``. Probes (``--probes``):

* ``recon``: raw and centred cosine to the backbone's features of the 2x input, pairs S/2->S and S/4->S/2 (S/4->S for
  4x methods), on the ``--corr_images`` (``liftkit.eval.reconstruction``);
* ``corr``: each ``--corr_images`` image against a seeded warped copy (crop, zoom, mirror, colour jitter), a grid of
  points matched by nearest neighbour, PCK at ``--alphas`` of the image side, split mirrored / not
  (``liftkit.eval.warp_probe``);
* ``boundary``: boundary F of an oracle-labelled k-means of the features against object masks (DAVIS first frames,
  VOC SegmentationObject; ``liftkit.eval.boundary``);
* ``spair``, ``davis``, ``tokencut``: eval_spair.py / eval_davis.py / eval_tokencut.py with small defaults, their
  headline numbers folded in.

Writes ``<output_dir>/results.json`` and ``results.md`` and prints the table; every number with its sample size.
Exit status 0, 1 if a sub-evaluation failed, 2 on bad input.
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

from extractor import ViTExtractor, available_backbones
from liftkit.backbones.specs import DEFAULT_BACKBONE, get_spec
from liftkit.data.image_io import list_images, load_image
from liftkit.data.masks import davis_first_frames, voc_object_masks
from liftkit.device import resolve_device
from liftkit.errors import ConfigError, LiftKitError
from liftkit.eval import boundary as bnd
from liftkit.eval import reconstruction as rc
from liftkit.eval import warp_probe as wp
from liftkit.eval.upsampler_report import jsonable, render
from liftkit.eval.upsamplers import Method, check_unique, method_features, parse_builtin, parse_lift_paths
from liftkit.train.data import find_images, screen_images, split_train_val

ROOT = Path(__file__).resolve().parent
PROBES = ("recon", "corr", "boundary", "spair", "davis", "tokencut")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data_root", type=Path, default=ROOT.parent / "shared" / "data",
                   help="holds COCO/, DAVIS/, VOC2007/, SPair-71k/, imagenet-sample-images/ (default ../shared/data)")
    d.add_argument("--corr_images", default="coco", help="comma-separated image sets for recon and corr: coco (the "
                   "80 COCO train2017 images), imagenet_val (the 30 images held out of LiFT's training), or folders")
    d.add_argument("--boundary_sets", default="davis,voc07",
                   help="comma-separated: davis (first frames), voc07 / voc12 (SegmentationObject), or VOC folders")
    d.add_argument("--limit", type=int, default=None, help="at most N images per set (evenly spread)")
    d.add_argument("--seed", type=int, default=0, help="seed of the warps and of k-means (default 0)")
    m = p.add_argument_group("model")
    m.add_argument("--model_type", default=DEFAULT_BACKBONE, help=f"backbone: {', '.join(available_backbones())}")
    m.add_argument("--layer", type=int, default=-1)
    m.add_argument("--facet", default="key", choices=("key", "query", "value", "token"))
    m.add_argument("--backbone_weights", default=None)
    m.add_argument("--offline", action="store_true", help="never download weights")
    m.add_argument("--device", default="auto")
    m.add_argument("--methods", default="low,bilinear,highres,lift,lift2",
                   help="comma-separated: low, bilinear, nearest, highres, lift, liftK, bilinearK, highresK")
    m.add_argument("--lift_path", default="auto", help="LiFT of the lift* rows: auto (shipped), none, or a file")
    m.add_argument("--lift_paths", default="", help="more LiFT files as rows: label=path,label2=path2")
    m.add_argument("--lift_iters", default="1", help="iterations of each --lift_paths file (rows label, label@K)")
    e = p.add_argument_group("probes")
    e.add_argument("--probes", default="recon,corr,boundary,spair", help=f"comma-separated of {', '.join(PROBES)}")
    e.add_argument("--imsize", type=int, default=224, help="corr: side of both views; boundary/davis/tokencut: "
                   "short side (a multiple of the patch)")
    e.add_argument("--recon_imsize", type=int, default=448, help="recon: S (a multiple of 4 patches)")
    e.add_argument("--grid", type=int, default=12, help="corr: G x G query points per pair")
    e.add_argument("--min_scale", type=float, default=0.5, help="corr: smallest crop side (zoom up to 1/x)")
    e.add_argument("--match", default="cell", choices=wp.MATCH_MODES, help="corr: best feature cell or pixel")
    e.add_argument("--alphas", default="0.01,0.02,0.03,0.05,0.1", help="corr: PCK thresholds (fractions of side)")
    e.add_argument("--boundary_k", default="4,8,16", help="boundary: k-means cluster counts (F is their mean)")
    e.add_argument("--bound_th", type=float, default=0.008, help="boundary tolerance: fraction of diagonal or px")
    e.add_argument("--davis_max_frames", type=int, default=10, help="davis: frames per sequence (>= 3)")
    e.add_argument("--tokencut_dataset", default="voc07", choices=("voc07", "voc12", "coco"))
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", type=Path, required=True, help="results.json, results.md, sub-evaluation files")
    o.add_argument("--quiet", action="store_true", help="no per-image progress lines")
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
    """Validate every flag up front (one-line ConfigError each); returns the parsed lists."""
    probes = _csv(args.probes)
    bad = [p for p in probes if p not in PROBES]
    if not probes or bad:
        raise ConfigError(f"--probes '{args.probes}': choose from {', '.join(PROBES)}")
    builtins = [parse_builtin(n) for n in _csv(args.methods)]
    files = parse_lift_paths(args.lift_paths)
    for label, path in files:
        if not Path(path).is_file():
            raise ConfigError(f"--lift_paths: the file of '{label}', '{path}', does not exist")
    iters = _numbers(args.lift_iters, "lift_iters", int, 1, 4)
    if not builtins and not files:
        raise ConfigError("--methods is empty and no --lift_paths given: nothing to compare")
    p = get_spec(args.model_type).patch_size
    if args.imsize < p or args.imsize % p:
        raise ConfigError(f"--imsize {args.imsize}: must be a positive multiple of the {p}-px patch")
    if args.recon_imsize % (4 * p):
        raise ConfigError(f"--recon_imsize {args.recon_imsize}: must be a multiple of 4 x {p} px (S/4 on the grid)")
    if args.grid < 1 or not 0 < args.min_scale <= 1 or args.bound_th <= 0:
        raise ConfigError("--grid must be >= 1, --min_scale in (0, 1], --bound_th > 0")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be at least 1")
    if args.davis_max_frames < 3:
        raise ConfigError(f"--davis_max_frames {args.davis_max_frames}: must be at least 3")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise ConfigError(f"--output_dir '{args.output_dir}' is a file")
    if not args.data_root.is_dir():
        raise ConfigError(f"--data_root '{args.data_root}' is not a folder")
    return {"probes": probes, "builtins": builtins, "files": files, "iters": iters,
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


def build_methods(ext: ViTExtractor, parsed: dict) -> List[Method]:
    """The rows: built-ins (lift rows use ``ext``'s LiFT), then each labelled file on a view sharing the backbone."""
    rows = list(parsed["builtins"])
    if any(m.kind == "lift" for m in rows) and ext.lift is None:
        raise ConfigError(f"--methods has lift rows but no LiFT is loaded for {ext.spec.name}; pass --lift_path FILE "
                          "or drop them")
    for label, path in parsed["files"]:
        view = copy.copy(ext)  # shares the backbone; its own LiFT
        view.load_lift(Path(path))
        rows += [Method(label if k == 1 else f"{label}@{k}", "lift", k, view, str(path)) for k in parsed["iters"]]
    check_unique(rows)
    return rows


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[eval_upsampler] {msg}", file=sys.stderr)


def run_recon(ext, methods, paths, args) -> dict:
    """Pass 1: the pyramid's backbone maps of every image; pass 2: every method on both pairs."""
    items = []
    for k, path in enumerate(paths):
        img = load_image(path, min_side=ext.patch_size)
        x = ext.preprocess(wp.centre_square(*img.size, args.recon_imsize).render(img), size=(args.recon_imsize,) * 2)
        items.append(rc.pyramid_features(ext.extract_descriptors, x))
        log(f"recon pass 1: {k + 1}/{len(paths)}", args.quiet or (k + 1) % 20)
    means = rc.level_means(items)
    acc = rc.ReconAccumulator()
    scales = {m.label: m.scale for m in methods}

    def predict(low, img, scale):
        return method_features(ext, img.to(ext.device), [m for m in methods if m.scale == scale], low=low.to(ext.device))

    for item in items:
        rc.score_item(item, means, predict, scales, acc)
    return {"images": len(items), "imsize": args.recon_imsize, "per_method": acc.summary()}


def run_corr(ext, methods, paths, args, alphas) -> tuple:
    acc = {m.label: wp.WarpPCK(alphas=alphas) for m in methods}
    grids = {}
    for k, path in enumerate(paths):
        img = load_image(path, min_side=ext.patch_size)
        rng = wp.pair_rng(args.seed, k)
        src, trg = wp.random_pair(img.size[0], img.size[1], args.imsize, rng, args.min_scale)
        fs, ft = (method_features(ext, ext.preprocess(v.render(img), size=(args.imsize,) * 2), methods)
                  for v in (src, trg))
        wp.score_pair({m: f[0] for m, f in fs.items()}, {m: f[0] for m, f in ft.items()}, src, trg, args.grid, acc,
                      args.match, rng)
        grids = {m: "x".join(str(s) for s in f.shape[-2:]) for m, f in fs.items()}
        log(f"corr: {k + 1}/{len(paths)}", args.quiet or (k + 1) % 20)
    return {"images": len(paths), "imsize": args.imsize, "grid": args.grid, "match": args.match,
            "min_scale": args.min_scale, "alphas": list(alphas),
            "per_method": {m: a.summary() for m, a in acc.items()}}, grids


def run_boundary(ext, methods, items, args, ks) -> dict:
    per: Dict[str, list] = {m.label: [] for m in methods}
    for item in items:
        x, _ = ext.load_image(item.image_path, load_size=args.imsize)
        feats = method_features(ext, x, methods)
        for m, f in feats.items():
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

def _sub_runs(methods: List[Method], ext: ViTExtractor) -> list:
    """[(--lift_path, [(the script's method name, our row label)])]: built-ins in one run, each LiFT file in its own."""
    runs = []
    builtin = [(m.label, m.label) for m in methods if not m.source]
    if builtin:
        runs.append((str(ext.lift_path) if ext.lift_path else "none", builtin))
    by_file: Dict[str, list] = {}
    for m in methods:
        if m.source:
            by_file.setdefault(m.source, []).append(("lift" if m.k == 1 else f"lift{m.k}", m.label))
    return runs + list(by_file.items())


def _headline(probe: str, r: dict, name: str) -> dict:
    if probe == "spair":
        pck = r["methods"][name]["pck"]["mean_over_categories"]
        return {"pck@0.05": pck["pck@0.05"], "pck@0.1": pck["pck@0.1"], "n": r["dataset"]["keypoints"]}
    if probe == "davis":
        g = r["methods"][name]
        return {**{k: g["global"][k] for k in ("J&F-Mean", "J-Mean", "F-Mean")}, "n": len(g["per_sequence"])}
    return {"corloc": r["methods"][name]["corloc"], "n": r["methods"][name]["num_images"]}


def run_sub(probe: str, args, methods: List[Method], ext: ViTExtractor) -> dict:
    """eval_spair / eval_davis / eval_tokencut with small defaults, once per LiFT file; their headline numbers."""
    import eval_davis
    import eval_spair
    import eval_tokencut

    dr = args.data_root
    common = ["--model_type", args.model_type, "--layer", str(args.layer), "--facet", args.facet,
              "--device", str(ext.device)] + (["--offline"] if args.offline else []) + \
        (["--backbone_weights", str(args.backbone_weights)] if args.backbone_weights else [])
    per, cmds, errors = {}, [], []
    for i, (lift, pairs) in enumerate(_sub_runs(methods, ext)):
        out = args.output_dir / f"{probe}_{i}.json"
        if probe == "spair":
            mod, argv = eval_spair, ["--data_path", str(dr / "SPair-71k"), "--imsize", str(args.imsize), "--quiet"]
        elif probe == "davis":
            mod, argv = eval_davis, ["--data_path", str(dr / "DAVIS"), "--output_dir", str(args.output_dir / f"davis_{i}"),
                                     "--overwrite", "--max_frames", str(args.davis_max_frames), "--short_side",
                                     str(args.imsize), "--quiet"]
        else:
            ds = args.tokencut_dataset
            root = dr / "COCO" / "train2017" if ds == "coco" else dr / f"VOC20{ds[3:]}" / "VOCdevkit" / f"VOC20{ds[3:]}"
            mod, argv = eval_tokencut, ["--dataset", ds, "--dataroot", str(root), "--load_size", str(args.imsize)]
            if ds == "coco":
                argv += ["--annotations", str(dr / "COCO" / "annotations" / "instances_train2017.json")]
        argv += common + ["--methods", ",".join(n for n, _ in pairs), "--lift_path", lift, "--output_json", str(out)]
        cmds.append(f"python {mod.__name__}.py " + " ".join(argv))
        code = mod.main(argv)
        if not out.is_file():
            errors.append(f"{mod.__name__} run {i} exited {code} without results")
            continue
        r = json.loads(out.read_text())
        for name, label in pairs:
            per[label] = _headline(probe, r, name)
        if code != 0:
            errors.append(f"{mod.__name__} run {i} exited {code}")
        if probe == "tokencut":
            per_what = f"CorLoc, {args.tokencut_dataset}, tau {r['tau']:g}, short side {args.imsize}"
        elif probe == "spair":
            per_what = f"{r['dataset']['evaluated_pairs']} pairs, imsize {args.imsize}; PCK mean over categories"
        else:
            per_what = f"first {args.davis_max_frames} frames, short side {args.imsize}"
    return {"what": per_what if per else "", "commands": cmds, "per_method": per, "error": "; ".join(errors)}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parsed = check_args(args)
        device = str(resolve_device(args.device))
        log("args: " + json.dumps({k: str(v) for k, v in vars(args).items()}, sort_keys=True))
        probes = parsed["probes"]
        paths = image_sets(args) if {"recon", "corr"} & set(probes) else {}
        masks = mask_sets(args) if "boundary" in probes else []
        lift_path = None if str(args.lift_path).lower() == "none" else args.lift_path
        ext = ViTExtractor(model_type=args.model_type, layer=args.layer, facet=args.facet,
                           backbone_weights=args.backbone_weights, offline=args.offline, lift_path=lift_path,
                           device=device)
        methods = build_methods(ext, parsed)
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except LiftKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    all_paths = [q for ps in paths.values() for q in ps]
    res = {"config": {**{k: str(v) for k, v in vars(args).items()}, "layer": ext.layer, "device": device,
                      "extractor": ext.describe(), "corr_sets": {k: len(v) for k, v in paths.items()}},
           "methods": [{"label": m.label, "kind": m.kind, "k": m.k, "scale": m.scale,
                        "source": m.source or (str(ext.lift_path) if m.kind == "lift" else "")} for m in methods],
           "seconds": {}}
    failed = False
    with torch.no_grad():
        for probe in probes:
            t0 = time.perf_counter()
            if probe == "recon":
                res["recon"] = run_recon(ext, methods, all_paths, args)
            elif probe == "corr":
                res["corr"], res["grids"] = run_corr(ext, methods, all_paths, args, parsed["alphas"])
            elif probe == "boundary":
                res["boundary"] = run_boundary(ext, methods, masks, args, parsed["ks"])
            else:
                with contextlib.redirect_stdout(sys.stderr):
                    res[probe] = run_sub(probe, args, methods, ext)
                failed |= bool(res[probe].get("error"))
            res["seconds"][probe] = round(time.perf_counter() - t0, 1)
            log(f"{probe}: {res['seconds'][probe]} s")
    text = render(res)
    (args.output_dir / "results.json").write_text(json.dumps(jsonable(res), indent=1))
    (args.output_dir / "results.md").write_text(text)
    print(text)
    log(f"wrote {args.output_dir / 'results.json'} and results.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
