"""`bench quality`'s statistics and reports: mean and sd over seeds, the verdict per metric, Markdown, the figure."""

import math
from pathlib import Path
from typing import Any

import numpy as np

from models.files import atomic_path

PAIRS = {"transsrgan_vs_dcgan": ("transsrgan", "dcgan"),
         "transsrgan_vs_dcgan_matched": ("transsrgan", "dcgan_matched")}
SPREAD = 2.0               # "better" / "worse": the means differ by more than SPREAD pooled sd; else "tie"
DISTANCES = {"digits": ("fd_digits", "kd_digits")}   # a domain's distances, judged instead of Inception's
Stat = dict[str, float]    # {"mean": ..., "sd": ...}


def summarise(values: list[float]) -> Stat:
    """Mean and sample sd (n - 1) over the seeds; sd 0 for one seed (no spread is known)."""
    x = np.asarray(values, dtype=np.float64)
    return {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0}


def compare(a: Stat, b: Stat, higher_is_better: bool, spread: float = SPREAD) -> str:
    """'better' when a's mean beats b's by more than `spread` pooled sd, sqrt((sd_a^2 + sd_b^2) / 2) (equal
    numbers of seeds), in the metric's sense; 'worse' the other way round; else 'tie'. With one seed the pooled sd
    is 0, so any difference decides."""
    pooled = math.sqrt((a["sd"] ** 2 + b["sd"] ** 2) / 2)
    diff = a["mean"] - b["mean"]
    if abs(diff) <= spread * pooled or diff == 0:
        return "tie"
    return "better" if (diff > 0) == higher_is_better else "worse"


def verdict(metrics: dict[str, dict[str, Stat]], higher_is_better: dict[str, bool]) -> dict[str, dict[str, str]]:
    """{pair: {metric: 'better' | 'worse' | 'tie'}} for every pair of PAIRS present and every ranked metric both
    models have; the first model of a pair is the one judged (TransSRGAN)."""
    out: dict[str, dict[str, str]] = {}
    for pair, (a, b) in PAIRS.items():
        if a in metrics and b in metrics:
            out[pair] = {k: compare(metrics[a][k], metrics[b][k], hib) for k, hib in higher_is_better.items()
                         if k in metrics[a] and k in metrics[b]}
    return out


def target_rules(domain: str | None, standard_weights: bool) -> dict[str, str]:
    """The benchmark's target per metric: the distances 'better' (the domain's own where it has them, else FID and
    KID on Inception features), recall and coverage 'not worse'."""
    from models.metrics.registry import public_name

    distances = DISTANCES.get(domain or "", (public_name("fid", standard_weights), public_name("kid", standard_weights)))
    return {**{k: "better" for k in distances},
            **{public_name(k, standard_weights): "not worse" for k in ("recall", "coverage")}}


def target(verdicts: dict[str, str], rules: dict[str, str]) -> bool:
    """Whether one pair's verdicts meet the rules; a metric without a verdict fails."""
    return all(verdicts.get(k) == "better" if rule == "better" else verdicts.get(k) in ("better", "tie")
               for k, rule in rules.items())


# ---------------------------------------------------------------- Markdown

def _pm(s: Stat) -> str:
    return f"{s['mean']:.4g} ± {s['sd']:.2g}"


PARAM_ROWS = (("generator params", "params"), ("discriminator params", "params_d"),
              ("iterations (G updates)", "iterations"), ("train seconds", "train_s"), ("s/iter", "s_per_iter"),
              ("images/s", "images_per_s"))


def markdown(result: dict[str, Any]) -> str:
    """Mean ± sd per model (best mean in bold), each pair's verdict per metric, parameters and throughput."""
    names = list(result["models"])
    pairs = list(result["verdict"])
    hib = result.get("higher_is_better", {})
    seeds = result.get("seeds", [0])
    lines = [f"### Quality at equal budget: {result['minutes']:g} min per model and seed on `{result['data']}` "
             f"({result['resolution']}px, preset `{result['preset']}`, engine {result['engine']}, "
             f"{result['workers']} workers, global batch {result['global_batch']}, n = {result['n']}, "
             f"{len(seeds)} training seed(s): {', '.join(map(str, seeds))})", "",
             "mean ± sd over the seeds; a verdict is 'better'/'worse' when the means differ by more than "
             f"{SPREAD:g} pooled sd, else 'tie'.", "",
             "| metric | " + " | ".join(names) + " | better | " + " | ".join(pairs) + " |",
             "|---|" + "---:|" * len(names) + "---|" + "---|" * len(pairs)]
    for k in result["models"][names[0]]["metrics"]:
        stats = [result["models"][m]["metrics"].get(k) for m in names]
        ranked = k in hib
        best = (max if hib.get(k) else min)(s["mean"] for s in stats if s is not None) if ranked else None
        cells = ["-" if s is None else (f"**{_pm(s)}**" if s["mean"] == best else _pm(s)) for s in stats]
        sense = ("higher" if hib[k] else "lower") if ranked else "reference"
        mark = " (primary)" if k == result["primary_metric"] else ""
        lines.append(f"| {k}{mark} | " + " | ".join(cells) + f" | {sense} | "
                     + " | ".join(result["verdict"][p].get(k, "-") for p in pairs) + " |")
    for label, key in PARAM_ROWS:
        vals = [result["models"][m][key] for m in names]
        cells = [f"{v:,}" if isinstance(v, int) else f"{v['mean']:.4g} ± {v['sd']:.2g}" for v in vals]
        lines.append(f"| {label} | " + " | ".join(cells) + " | |" + " |" * len(pairs))
    rules = result.get("target_rules", {})
    lines += ["", f"Feature extractor: `{result['feature_extractor']}`. Target: TransSRGAN "
              + ", ".join(f"{rule} on {k}" for k, rule in rules.items()) + "."]
    lines += [f"- {pair}: **{'met' if met else 'not met'}**" for pair, met in result.get("target", {}).items()]
    lines += search_markdown(result.get("recipe_search"))
    return "\n".join(lines) + "\n"


def search_markdown(search: dict[str, Any] | None) -> list[str]:
    """The recipe search's table (each model's score per recipe, its pick in bold), or nothing without a search."""
    if not search:
        return []
    recipes, names = search["recipes"], list(search["models"])
    seeds = search.get("seeds", [])
    lines = ["", f"Recipes: each model trained with each recipe for {search['minutes']:g} min on seed(s) "
             f"{', '.join(map(str, seeds))} (the same search budget for every model), scored by {search['metric']} "
             f"({'higher' if search['higher_is_better'] else 'lower'} is better; the mean over the search seeds); "
             "the benchmark's seeds then use each model's pick (bold); iterations in brackets.", "",
             "| recipe | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in recipes:
        cells = []
        for name in names:
            m = search["models"][name]
            cell = f"{m['scores'][r]:.4g} ({m['iterations'][r]:.0f})"
            cells.append(f"**{cell}**" if m["best"] == r else cell)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------- figure

def curve_band(runs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t mean, value mean, value sd) per curve point over the seeds' runs (the points are at the same budget
    fractions in every run; the sd is 0 for one seed)."""
    points = min(len(r["curve"]) for r in runs)
    t = np.array([[r["curve"][i]["t_s"] for i in range(points)] for r in runs])          # (seeds, points)
    v = np.array([[r["curve"][i].get(key, np.nan) for i in range(points)] for r in runs])
    sd = v.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(points)
    return t.mean(axis=0), v.mean(axis=0), sd


def _label(result: dict[str, Any], name: str) -> str:
    """'dcgan' or, after a recipe search, 'dcgan / dcgan_paper': the model and the recipe it trained with."""
    picked = result["models"][name].get("recipe")
    return f"{name} / {picked}" if picked else name


def save_figure(result: dict[str, Any], grids: dict[str, np.ndarray], real: np.ndarray, path: str | Path,
                grid_n: int = 64) -> Path:
    """Top: a real grid and each model's samples (uint8 (N, C, H, W), first seed, fixed noise). Bottom: each
    model's KD curve against training time, mean over the seeds with a ±1 sd band, and the same for recognisable
    when the digit metrics ran."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from models.grid import make_grid

    path = Path(path)
    cols = 1 + len(grids)
    fig = Figure(figsize=(4.2 * cols, 8.4), dpi=100)
    FigureCanvasAgg(fig)
    top = fig.subplots(2, cols)
    shown = np.random.default_rng(0).permutation(len(real))[:grid_n]     # data may be sorted by label: shuffle
    panels = [("real", real[shown])] + [(f"{_label(result, n)} ({result['models'][n]['iterations']['mean']:.0f} it)",
                                          g[:grid_n]) for n, g in grids.items()]
    for ax, (title, images) in zip(top[0], panels):
        g = make_grid(np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
        g = g[..., 0] if g.shape[-1] == 1 else g
        ax.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    keys = [k for k in ("kd_digits", "kid", "kd_inception_random") if k in result["higher_is_better"]][:1]
    keys += [k for k in ("recognisable",) if k in result["higher_is_better"]]
    for ax, key in zip(top[1], keys):
        for name in grids:
            t, mean, sd = curve_band(result["models"][name]["runs"], key)
            ax.plot(t, mean, "o-", label=_label(result, name))
            ax.fill_between(t, mean - sd, mean + sd, alpha=0.2)
        ax.set_title(f"{key} (EMA G, n = {result['curve_n']}) vs training time, mean ± sd over "
                     f"{len(result['seeds'])} seed(s)", fontsize=8)
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in top[1][len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
