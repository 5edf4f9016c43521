"""Figures of the report: forest plots, Kaplan-Meier / cumulative incidence curves, mixed-model trajectories.

Every figure is drawn at the same width (:data:`WIDTH_IN`) and font size, written as PNG and SVG
files, and returned as base64 PNG for the self-contained HTML page.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from petfeat.report.tables import feature_label, fmt_ci, fmt_num, fmt_p, transform_label

WIDTH_IN = 6.4
DPI = 150
FONT = 9
COLOURS = ("#1f4e79", "#c0504d", "#4f9a45", "#8064a2")


@dataclass
class Figure:
    """One figure of the report: caption, embedded PNG, and the files written."""

    key: str
    title: str
    caption: str
    png_b64: str
    files: list[Path]
    at_risk: dict | None = None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT + 1, "axes.labelsize": FONT,
                         "xtick.labelsize": FONT - 0.5, "ytick.labelsize": FONT - 0.5, "legend.fontsize": FONT - 0.5,
                         "svg.fonttype": "none", "axes.spines.top": False, "axes.spines.right": False})
    return plt


def save(fig, folder: Path | None, stem: str) -> tuple[str, list[Path]]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` under ``folder``; return the PNG as base64 and the files."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    files = []
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for ext in ("png", "svg"):
            p = folder / f"{stem}.{ext}"
            fig.savefig(p, format=ext, dpi=DPI)
            files.append(p)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode(), files


def _log_ticks(ax, lo: float, hi: float) -> None:
    """Log x axis with plain-number major ticks and no minor labels."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    cands = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    ticks = [t for t in cands if lo <= t <= hi]
    if np.log10(hi / lo) > 2.2:  # wide axes: decades only, so that labels never collide
        ticks = [t for t in ticks if float(np.log10(t)).is_integer()]
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def forest(block_rows: pd.DataFrame, title: str, folder: Path | None, stem: str) -> Figure:
    """Forest plot of one Cox analysis: HR (95% CI) on a log axis, with HR (95% CI), n/events and p columns.

    ``block_rows`` are the analysis' tested rows of the result table (``status == "ok"``).
    """
    from matplotlib.transforms import blended_transform_factory

    plt = _plt()
    g = block_rows.reset_index(drop=True)
    k = len(g)
    height = 0.85 + 0.32 * k
    fig = plt.figure(figsize=(WIDTH_IN, height))
    ax = fig.add_axes((0.31, 0.5 / height, 0.27, 0.32 * k / height))
    y = np.arange(k)[::-1].astype(float)
    hr, lo, hi = (g[c].to_numpy(dtype=np.float64) for c in ("hr", "ci_low", "ci_high"))
    ax.errorbar(hr, y, xerr=np.vstack([hr - lo, hi - hr]), fmt="s", color=COLOURS[0], ms=5, capsize=2.5, lw=1.2)
    ax.axvline(1.0, color="#888", lw=0.8, ls="--")
    finite = np.concatenate([lo[np.isfinite(lo)], hi[np.isfinite(hi)], [1.0]])
    xlo = 10 ** (np.floor(2 * np.log10(max(finite.min() * 0.9, 1e-3))) / 2)
    xhi = 10 ** (np.ceil(2 * np.log10(min(finite.max() * 1.1, 1e3))) / 2)
    _log_ticks(ax, min(xlo, 0.5), max(xhi, 2.0))
    ax.set_ylim(-0.6, k - 0.4)
    ax.set_yticks(y, [])
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)
    ax.set_xlabel("hazard ratio (log scale)")
    tr = blended_transform_factory(fig.transFigure, ax.transData)
    cols = ((0.01, "Feature", "left"), (0.60, "HR (95% CI)", "left"), (0.82, "n/events", "left"),
            (0.995, "p", "right"))
    for x, head, ha in cols:
        ax.text(x, k - 0.3, head, transform=tr, fontweight="bold", va="bottom", ha=ha)
    for yi, (_, r) in zip(y, g.iterrows()):
        label = f"{feature_label(r['feature'], units=False)}, {transform_label(r['transform'])}"
        values = (label, fmt_ci(r["hr"], r["ci_low"], r["ci_high"]), f"{int(r['n'])}/{int(r['events'])}",
                  fmt_p(r["p"]))
        for (x, _, ha), text in zip(cols, values):
            ax.text(x, yi, text, transform=tr, va="center", ha=ha)
    b64, files = save(fig, folder, stem)
    return Figure(stem, f"Forest plot: {title}", "Hazard ratio per feature with its 95% confidence interval "
                  "(Cox, Efron ties); dashed line: no effect (HR 1).", b64, files)


def _steps(times: np.ndarray, values: np.ndarray, t: float) -> float:
    i = np.searchsorted(times, t, side="right") - 1
    return float(values[max(i, 0)])


def km(d: pd.DataFrame, feature: str, title: str, folder: Path | None, stem: str, endpoint: str = "",
       adjusted_for: list[str] | None = None, note: str = "") -> Figure:
    """Kaplan-Meier (or, with a competing event, Aalen-Johansen) curves split at the feature's median.

    Censoring ticks, numbers at risk below the axis, and the log-rank p (of the cause-specific hazard
    when death competes) are drawn; the caption says how the groups were split.
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    from petfeat.stats.endpoints import cumulative_incidence

    plt = _plt()
    med = float(d[feature].median())
    groups = [(f"high: > {fmt_num(med, 3 if abs(med) < 10 else 1)}", d[d[feature] > med]),
              (f"low: \u2264 {fmt_num(med, 3 if abs(med) < 10 else 1)}", d[d[feature] <= med])]
    groups = [(lab, part) for lab, part in groups if len(part)]
    competing = "competing" in d.columns and bool(d["competing"].sum())
    fig = plt.figure(figsize=(WIDTH_IN, 4.3))
    ax = fig.add_axes((0.13, 0.36, 0.82, 0.54))
    horizon = float(d["time_days"].max())
    for i, (label, part) in enumerate(groups):
        c = COLOURS[i]
        t, e = part["time_days"].to_numpy(float), part["event"].to_numpy(int)
        if competing:
            cif = cumulative_incidence(part["time_days"], part["event"], part["competing"])
            tt, vv = np.r_[0.0, cif["time"].to_numpy(float)], np.r_[0.0, cif["cif"].to_numpy(float)]
        else:
            kmf = KaplanMeierFitter().fit(t, e)
            sf = kmf.survival_function_.iloc[:, 0]
            tt, vv = sf.index.to_numpy(float), sf.to_numpy(float)
        ax.step(tt, vv, where="post", color=c, lw=1.6, label=f"{label} (n={len(part)})")
        comp = part["competing"].to_numpy(int) == 1 if "competing" in part.columns else np.zeros(len(t), bool)
        cens = t[(e == 0) & ~comp]
        ax.plot(cens, [_steps(tt, vv, ci) for ci in cens], "|", color=c, ms=7, mew=1.2)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, horizon * 1.02)
    ax.set_ylabel("cumulative incidence" if competing else "event-free probability")
    ax.set_xlabel("days since first dose")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False, borderaxespad=0.2)
    lr_text = ""
    if len(groups) == 2:
        a, b = groups[0][1], groups[1][1]
        lr = logrank_test(a["time_days"], b["time_days"], a["event"], b["event"])
        lr_text = f"log-rank p = {fmt_p(lr.p_value)}".replace("= <", "< ")
        ax.text(0.98, 0.04 if not competing else 0.92, lr_text, transform=ax.transAxes, ha="right")
    ticks = [t for t in ax.get_xticks() if 0 <= t <= horizon * 1.02]
    ax.set_xticks(ticks)
    fig.text(0.01, 0.2, "at risk", fontweight="bold")
    at_risk = {"days": [int(round(t)) for t in ticks], "groups": []}
    for i, (label, part) in enumerate(groups):
        yy = 0.14 - 0.06 * i
        name = label.split(":")[0]
        fig.text(0.01, yy, name, color=COLOURS[i])
        at_risk["groups"].append((label, [int((part["time_days"] >= t).sum()) for t in ticks]))
        for t in ticks:
            n = int((part["time_days"] >= t).sum())
            x = ax.transData.transform((t, 0))[0]
            fig.text(fig.transFigure.inverted().transform((x, 0))[0], yy, str(n), ha="center", color=COLOURS[i])
    kind = "Cumulative incidence (Aalen-Johansen, death as competing event)" if competing else "Kaplan-Meier"
    how = (f"{endpoint[:1].upper() + endpoint[1:]}: groups split at the cohort median of "
           f"{feature_label(feature, with_region=True)} ({fmt_num(med, 3 if abs(med) < 10 else 1)}): high > median, "
           f"low \u2264 median. Ticks: censored. Unadjusted curves"
           + (f" (the model is adjusted for {', '.join(adjusted_for)})" if adjusted_for else "") + ".")
    how += f" {note}" if note else ""
    if lr_text:
        how += f" {lr_text[0].upper()}{lr_text[1:]}" + (" (cause-specific hazard, death censored)." if competing
                                                        else ".")
    b64, files = save(fig, folder, stem)
    return Figure(stem, f"{kind}: {feature_label(feature, with_region=True)} and {title}", how, b64, files,
                  at_risk)


def mixed(d: pd.DataFrame, feature: str, score: str, time: str, row: pd.Series, title: str, folder: Path | None,
          stem: str, value: str = "score", note: str = "") -> Figure:
    """Score over ``time`` by feature tertile: observed means (95% CI) and the mixed model's estimate.

    ``value`` is the column of ``d`` holding the scores of instrument ``score``. The model lines are
    ``mean + b_time (t - mean t) + b_feature (z - mean z) (+ b_int ...)`` at each
    tertile's mean feature value ``z`` (the model's transform), anchored at the observed grand mean.
    """
    plt = _plt()
    per = d.groupby("patient_id")[feature].first()
    sd = float(per.std(ddof=1)) if str(row.get("transform", "")).startswith("per SD") else 1.0
    if str(row.get("transform", "")).startswith("per doubling"):
        z_of = lambda v: np.log2(v)  # noqa: E731
    else:
        z_of = lambda v: v / sd  # noqa: E731
    cut = pd.qcut(per.rank(method="first"), 3, labels=["low", "middle", "high"])
    d = d.assign(tertile=d["patient_id"].map(cut), z=z_of(d[feature].astype(float)))
    fig = plt.figure(figsize=(WIDTH_IN, 4.3))
    ax = fig.add_axes((0.12, 0.13, 0.84, 0.72))
    tbar, zbar, ybar = d[time].mean(), d["z"].mean(), d[value].mean()
    inter = pd.notna(row.get("interaction_estimate", np.nan))
    main = "main_" if inter and pd.notna(row.get("main_estimate", np.nan)) else ""  # the headline is then x time
    b_f, b_t = float(row.get(f"{main}estimate", np.nan)), float(row.get("time_estimate", np.nan))
    b_i = float(row["interaction_estimate"]) if inter else 0.0
    c = float(row.get("time_centre", 0.0)) if pd.notna(row.get("time_centre", np.nan)) else 0.0
    for i, (lab, part) in enumerate(d.groupby("tertile", observed=True, sort=True)):
        colour = COLOURS[[0, 3, 1][i % 3]]
        m = part.groupby(time)[value].agg(["mean", "std", "count"])
        half = 1.96 * m["std"].fillna(0) / np.sqrt(m["count"])
        ax.errorbar(m.index + (i - 1) * 0.07, m["mean"], yerr=half, fmt="o", color=colour, ms=4, capsize=2, lw=1,
                    label=f"{lab} tertile (n={part['patient_id'].nunique()})")
        if np.isfinite(b_f) and np.isfinite(b_t):
            tt = np.linspace(d[time].min(), d[time].max(), 20)
            zm = part["z"].mean()
            ax.plot(tt, ybar + b_t * (tt - tbar) + b_f * (zm - zbar) + b_i * (zm * (tt - c) - zbar * (tbar - c)),
                    color=colour, lw=1.4)
    ax.set_xlabel(time)
    ax.set_ylabel(f"{score} score")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False, borderaxespad=0.2)
    effect = fmt_ci(b_f, row.get(f"{main}ci_low", np.nan), row.get(f"{main}ci_high", np.nan))
    b64, files = save(fig, folder, stem)
    at = f" at {time} {fmt_num(c, 2)}" if main else ""
    cap = (f"Points: observed mean {score} score (95% CI) per {time} in tertiles of "
           f"{feature_label(feature, with_region=True)}; lines: linear mixed model estimate at each tertile's mean "
           f"({transform_label(row.get('transform'))}{at}: {effect}, p {fmt_p(row.get(f'{main}p'))}"
           + (f"; x {time}: " + fmt_ci(b_i, row.get("interaction_ci_low"), row.get("interaction_ci_high"))
              + f" per {time}, p {fmt_p(row.get('interaction_p'))}" if inter else "") + ").")
    cap += f" {note}" if note else ""
    return Figure(stem, f"Mixed model: {title}", cap, b64, files)
