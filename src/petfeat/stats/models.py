"""Cox proportional hazards (lifelines, Efron ties) and linear mixed models (statsmodels, REML).

Every fit reports n, events (Cox), events per variable, the estimate with its 95% CI and p, and
every warning the fitter raised (never swallowed: they are returned in ``warnings``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from petfeat.errors import PetfeatError

TRANSFORMS = ("unit", "sd", "log2")


def transform(x: pd.Series, how: str) -> tuple[pd.Series, str]:
    """Feature transform and its description: per unit, per SD, or log2 (per doubling)."""
    if how == "unit":
        return x.astype(float), "per unit"
    if how == "sd":
        sd = float(x.std(ddof=1))
        if not sd > 0:
            raise PetfeatError(f"feature {x.name!r} has zero spread; a per-SD effect is undefined.")
        return x.astype(float) / sd, f"per SD ({sd:.4g})"
    if how == "log2":
        if (x <= 0).any():
            raise PetfeatError(f"feature {x.name!r} has values <= 0; log2 needs positive values.")
        return np.log2(x.astype(float)), "per doubling (log2)"
    raise PetfeatError(f"transform is {how!r}; choose one of {', '.join(TRANSFORMS)}.")


def fit_cox(df: pd.DataFrame, duration: str, event: str, feature: str, covariates: Sequence[str] = (),
            how: str = "unit") -> dict:
    """Multivariable Cox model of ``feature`` (transformed) adjusted for ``covariates``."""
    from lifelines import CoxPHFitter
    from lifelines.statistics import proportional_hazard_test

    data = df[[duration, event, feature, *covariates]].dropna().copy()
    data[feature], scale = transform(data[feature], how)
    out = {"feature": feature, "transform": scale, "n": int(len(data)), "events": int(data[event].sum()),
           "covariates": list(covariates)}
    out["events_per_variable"] = out["events"] / (1 + len(covariates))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cph = CoxPHFitter()  # Efron ties (lifelines' method)
        cph.fit(data, duration_col=duration, event_col=event)
        ph = proportional_hazard_test(cph, data, time_transform="rank")
    s = cph.summary.loc[feature]
    out.update(hr=float(s["exp(coef)"]), ci_low=float(s["exp(coef) lower 95%"]),
               ci_high=float(s["exp(coef) upper 95%"]), p=float(s["p"]), coef=float(s["coef"]),
               concordance=float(cph.concordance_index_), ph_test_p=float(ph.summary.loc[feature, "p"]),
               warnings=[f"{w.category.__name__}: {w.message}" for w in caught])
    return out


def fit_mixed(df: pd.DataFrame, score: str, feature: str, time: str, group: str, covariates: Sequence[str] = (),
              how: str = "unit") -> dict:
    """``score ~ feature + time (+ covariates)`` with a random intercept per ``group`` (REML)."""
    import statsmodels.formula.api as smf

    cols = [score, feature, time, group, *covariates]
    data = df[cols].dropna().copy()
    data[feature], scale = transform(data[feature], how)
    safe = {c: f"v{i}" for i, c in enumerate(cols)}  # formula-safe names (features are 'region.feature')
    data = data.rename(columns=safe)
    formula = f"{safe[score]} ~ {safe[feature]} + {safe[time]}" + "".join(f" + {safe[c]}" for c in covariates)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = smf.mixedlm(formula, data, groups=data[safe[group]]).fit(reml=True)
    ci = res.conf_int().loc[safe[feature]]
    readable = f"{score} ~ {feature} + {time}" + "".join(f" + {c}" for c in covariates) + f" + (1 | {group})"
    return {"feature": feature, "transform": scale, "n_obs": int(len(data)),
            "n_groups": int(data[safe[group]].nunique()), "estimate": float(res.params[safe[feature]]),
            "ci_low": float(ci[0]), "ci_high": float(ci[1]), "p": float(res.pvalues[safe[feature]]),
            "converged": bool(res.converged), "formula": readable,
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


def fdr(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    return multipletests(p, method="fdr_bh")[1] if len(p) else p


def format_hr(r: dict) -> str:
    """``HR = 0.74, 95% CI 0.56-0.98, p = 0.033``: the way the study reports it."""
    p = f"p = {r['p']:.3f}" if r["p"] >= 0.001 else "p < 0.001"
    return f"HR = {r['hr']:.2f}, 95% CI {r['ci_low']:.2f}-{r['ci_high']:.2f}, {p}"
