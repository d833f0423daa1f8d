"""The upsampler benchmark's tables (Markdown, also printed to stdout) from its results dict.

One summary table — a row per method, a column per headline number, the sample size of each column in its header
(or next to a number whose sample differs from its column's) — then one detail table per probe.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

Column = Tuple[str, Callable[[str], Optional[float]], Callable[[str], Optional[int]], str, int]
# (header, value(method), n(method), what n counts, decimals)


def _fmt(v: Optional[float], decimals: int, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.{decimals}f}" if pct else f"{v:.{decimals}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def summary_columns(res: dict) -> List[Column]:
    """The headline columns present in ``res`` (percentages for PCK, F, J&F, CorLoc; cosines as is)."""
    cols: List[Column] = []
    rec = res.get("recon")
    if rec:
        pm = rec["per_method"]
        for pair, kind, dec in (("S/2->S", "raw", 4), ("S/2->S", "centred", 4), ("S/4->S/2", "centred", 4),
                                ("S/4->S", "centred", 4)):
            if any(pair in v for v in pm.values()):
                cols.append((f"recon {kind} {pair}", lambda m, pm=pm, p=pair, k=kind: _get(pm, m, p, k),
                             lambda m, pm=pm, p=pair: _get(pm, m, p, "images"), "img", dec))
    cor = res.get("corr")
    if cor:
        pm = cor["per_method"]
        for a in cor["alphas"]:
            key = f"pck@{a:g}"
            cols.append((f"warp PCK@{a:g} %", lambda m, pm=pm, k=key: _get(pm, m, "all", "pck", k),
                         lambda m, pm=pm: _get(pm, m, "all", "points"), "pts", -1))
    bnd = res.get("boundary")
    if bnd:
        pm = bnd["per_method"]
        cols.append(("boundary F %", lambda m, pm=pm: _get(pm, m, "f_mean"), lambda m, pm=pm: _get(pm, m, "images"),
                     "img", -1))
        cols.append(("boundary J %", lambda m, pm=pm: _get(pm, m, "j_mean"), lambda m, pm=pm: _get(pm, m, "images"),
                     "img", -1))
    for probe, key, title, unit in (("spair", "pck@0.1", "SPair PCK@0.1 %", "kps"), ("davis", "J&F-Mean", "DAVIS J&F %",
                                    "seq"), ("tokencut", "corloc", "TokenCut CorLoc %", "img")):
        sub = res.get(probe)
        if sub and sub.get("per_method"):
            pm = sub["per_method"]
            cols.append((title, lambda m, pm=pm, k=key: _get(pm, m, k), lambda m, pm=pm: _get(pm, m, "n"), unit, -1))
    return cols


def summary_table(res: dict) -> List[str]:
    """The summary table (Markdown lines). Decimals -1 = a fraction shown in % with 1 decimal."""
    methods = [m["label"] for m in res["methods"]]
    cols = summary_columns(res)
    header = ["method", "grid"]
    col_n = []
    for title, _, n_of, unit, _ in cols:
        ns = {n_of(m) for m in methods} - {None}
        n = max(ns) if ns else None
        col_n.append(n)
        header.append(f"{title} (n={n:,} {unit})" if n is not None else title)
    rows = []
    for m in methods:
        row = [m, res.get("grids", {}).get(m, "")]
        for (title, val, n_of, unit, dec), n in zip(cols, col_n):
            cell = _fmt(val(m), 1, pct=True) if dec < 0 else _fmt(val(m), dec)
            if val(m) is not None and n_of(m) not in (None, n):
                cell += f" (n={n_of(m)})"
            row.append(cell)
        rows.append(row)
    return _table(header, rows)


def detail_tables(res: dict) -> List[str]:
    """One table per probe with everything it measured (Markdown lines)."""
    methods = [m["label"] for m in res["methods"]]
    out: List[str] = []
    rec = res.get("recon")
    if rec:
        pm = rec["per_method"]
        pairs = [p for p in ("S/2->S", "S/4->S/2", "S/4->S") if any(p in v for v in pm.values())]
        out += ["", f"**Reconstruction** ({rec['images']} images, S = {rec['imsize']}; centred with the mean target "
                    "feature of these images; mean over images of the mean over locations):", ""]
        head = ["method"] + [f"{k} {p}" for p in pairs for k in ("raw", "centred")]
        out += _table(head, [[m] + [_fmt(_get(pm, m, p, k), 4) for p in pairs for k in ("raw", "centred")]
                             for m in methods if m in pm])
    cor = res.get("corr")
    if cor:
        pm = cor["per_method"]
        first = next(iter(pm.values()))
        out += ["", f"**Warp correspondence** ({cor['images']} images, one warped pair each, {cor['grid']}x"
                    f"{cor['grid']} points per pair; PCK in % of the {cor['imsize']}-px side, match `{cor['match']}`;"
                    f" {first['no_flip']['pairs']} pairs not mirrored, {first['flip']['pairs']} mirrored):", ""]
        keys = [f"pck@{a:g}" for a in cor["alphas"]]
        head = ["method", "pairs"] + [k.upper() for k in keys] + ["median err %"]
        rows = []
        for m in methods:
            for g in ("all", "no_flip", "flip"):
                s = _get(pm, m, g)
                if s:
                    rows.append([m if g == "all" else f"{m} ({g})", f"{s['pairs']} ({s['points']:,} pts)"]
                                + [_fmt(s["pck"][k], 1, True) for k in keys] + [_fmt(s["median_error"], 2, True)])
        out += _table(head, rows)
    bnd = res.get("boundary")
    if bnd:
        pm = bnd["per_method"]
        ks = bnd["ks"]
        out += ["", f"**Boundary** ({bnd['images']} images: {', '.join(bnd['sets'])}; boundary F (tolerance "
                    f"{bnd['bound_th']:g} of the diagonal) and J of the oracle-labelled k-means segmentation, %):", ""]
        head = ["method"] + [f"F k={k}" for k in ks] + ["F mean"] + [f"J k={k}" for k in ks] + ["J mean"]
        out += _table(head, [[m] + [_fmt(_get(pm, m, "f", str(k)), 1, True) for k in ks]
                             + [_fmt(_get(pm, m, "f_mean"), 1, True)]
                             + [_fmt(_get(pm, m, "j", str(k)), 1, True) for k in ks]
                             + [_fmt(_get(pm, m, "j_mean"), 1, True)] for m in methods if m in pm])
    for probe in ("spair", "davis", "tokencut"):
        sub = res.get(probe)
        if sub:
            out += ["", f"**{probe}** ({sub.get('what', '')}; % except n):", ""]
            pm = sub.get("per_method", {})
            keys = sorted({k for v in pm.values() for k in v if k != "n"})
            out += _table(["method", "n"] + keys, [[m, str(v.get("n"))] + [_fmt(v.get(k), 1, True) for k in keys]
                                                   for m, v in pm.items()])
            out += ["", "```"] + sub.get("commands", []) + ["```"]
            if sub.get("error"):
                out.append(f"\n{probe} failed: {sub['error']}")
    return out


def sample_line(res: dict) -> str:
    """One line with every probe's sample."""
    parts = []
    if res.get("recon"):
        parts.append(f"recon {res['recon']['images']} images at S = {res['recon']['imsize']}")
    if res.get("corr"):
        c = res["corr"]
        parts.append(f"warp {c['images']} pairs x {c['grid'] ** 2} points ({c['imsize']} px, match {c['match']})")
    if res.get("boundary"):
        parts.append(f"boundary {res['boundary']['images']} images ({', '.join(res['boundary']['sets'])})")
    for probe in ("spair", "davis", "tokencut"):
        if res.get(probe):
            parts.append(f"{probe}: {res[probe].get('what', '')}")
    return "Samples: " + "; ".join(parts) + "."


def render(res: dict) -> str:
    """The whole report: summary then details."""
    cfg = res["config"]
    head = [f"Upsampler benchmark: {cfg['model_type']} layer {cfg['layer']} {cfg['facet']}; LiFT files: "
            + ", ".join(sorted({f"{m['label']} = {m['source']}" for m in res["methods"] if m["source"]})), "",
            sample_line(res), ""]
    return "\n".join(head + summary_table(res) + detail_tables(res)) + "\n"


def jsonable(obj: Dict) -> Dict:
    """int keys -> str (JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
