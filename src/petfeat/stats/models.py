"""Cox proportional hazards (lifelines, Efron ties) and linear mixed models (statsmodels, REML).

Every fit reports n, events (Cox), events per variable, the estimate with its 95% CI and p, and
every warning the fitter raised (never swallowed: they are returned in ``warnings``).

A Cox fit is checked the way R's ``coxph`` checks it: from lifelines' estimate, Newton-Raphson steps
on the Efron partial likelihood must settle (each step below 1e-8 relative to the coefficient within
30 steps); a coefficient that keeps moving (a monotone likelihood, as under complete separation) is
reported as not converged, never as a hazard ratio. The proportional-hazards test is R's
``cox.zph`` (survival >= 3.0): the score test of the time-interaction terms ``g(t) x`` in the
model extended by them, with the full information matrix at ``(beta_hat, 0)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from petfeat.errors import PetfeatError
from petfeat.stats.errors import ModelError

TRANSFORMS = ("unit", "sd", "log2")
ZPH_TRANSFORMS = ("km", "rank", "identity", "log")
#: Events per variable below which a Cox row is flagged.
MIN_EVENTS_PER_VARIABLE = 10.0


def transform(x: pd.Series, how: str, groups: pd.Series | None = None) -> tuple[pd.Series, str]:
    """Feature transform and its description: per unit, per SD, or log2 (per doubling).

    Parameters
    ----------
    x
        Feature values (one per row of the model's data).
    how
        ``"unit"``, ``"sd"`` or ``"log2"``.
    groups
        For data with several rows per patient (mixed models): the patient of each row. The SD is
        then taken over one value per patient, the same SD a one-row-per-patient (Cox) model uses.
    """
    if how == "unit":
        return x.astype(float), "per unit"
    if how == "sd":
        per = x if groups is None else x.groupby(groups.to_numpy()).first()
        sd = float(per.std(ddof=1))
        if not sd > 0:
            raise PetfeatError(f"feature {x.name!r} has zero spread; a per-SD effect is undefined.")
        return x.astype(float) / sd, f"per SD ({sd:.4g})"
    if how == "log2":
        if (x <= 0).any():
            raise PetfeatError(f"feature {x.name!r} has values <= 0; log2 needs positive values.")
        return np.log2(x.astype(float)), "per doubling (log2)"
    raise PetfeatError(f"transform is {how!r}; choose one of {', '.join(TRANSFORMS)}.")


def efron_derivatives(time, event, X, beta, gtime=None) -> tuple[float, np.ndarray, np.ndarray]:
    """Efron partial log-likelihood, score and information of a Cox model at ``beta``.

    With ``gtime`` (one value per row: the transformed, centred time of the row) the score and
    information are those of the model extended by ``gtime(t) * x`` at ``(beta, 0)``: a score of
    length ``2p`` and a ``2p x 2p`` information matrix (R survival's ``zph1``).
    """
    t = np.asarray(time, dtype=np.float64)
    dead_all = np.asarray(event, dtype=np.float64) == 1
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    p = X.shape[1]
    eta = X @ np.asarray(beta, dtype=np.float64)
    shift = eta.max()
    w = np.exp(eta - shift)
    order = np.argsort(-t, kind="stable")
    ts, ws, xs = t[order], w[order], X[order]
    cs0 = np.cumsum(ws)
    cs1 = np.cumsum(ws[:, None] * xs, axis=0)
    cs2 = np.cumsum(ws[:, None, None] * xs[:, :, None] * xs[:, None, :], axis=0)
    times = np.unique(t[dead_all])
    last = np.searchsorted(-ts, -times, side="right") - 1  # last row (descending time) still at risk
    q = 2 * p if gtime is not None else p
    u, imat, loglik = np.zeros(q), np.zeros((q, q)), 0.0
    for k, tau in enumerate(times):
        dead = dead_all & (t == tau)
        nd = int(dead.sum())
        wd, xd = w[dead], X[dead]
        d0, d1, d2 = wd.sum(), wd @ xd, (xd * wd[:, None]).T @ xd
        s0, s1, s2 = cs0[last[k]], cs1[last[k]], cs2[last[k]]
        g = float(np.asarray(gtime)[dead][0]) if gtime is not None else 0.0
        xsum = xd.sum(axis=0)
        loglik += float(eta[dead].sum())
        u[:p] += xsum
        if gtime is not None:
            u[p:] += g * xsum
        for j in range(nd):
            f = j / nd
            a0, a1, a2 = s0 - f * d0, s1 - f * d1, s2 - f * d2
            mean = a1 / a0
            var = a2 / a0 - np.outer(mean, mean)
            loglik -= float(np.log(a0) + shift)
            u[:p] -= mean
            imat[:p, :p] += var
            if gtime is not None:
                u[p:] -= g * mean
                imat[:p, p:] += g * var
                imat[p:, p:] += g * g * var
    if gtime is not None:
        imat[p:, :p] = imat[:p, p:].T
    return loglik, u, imat


def _zph_time(time, event, how: str) -> np.ndarray:
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    if how == "km":  # 1 - left-continuous Kaplan-Meier of all rows, at each row's own time
        ut = np.unique(t)
        d = np.bincount(np.searchsorted(ut, t), weights=e, minlength=len(ut))
        at_risk = len(t) - np.searchsorted(np.sort(t), ut, side="left")
        surv = np.cumprod(1.0 - d / at_risk)
        return 1.0 - np.concatenate([[1.0], surv])[np.searchsorted(ut, t, side="left")]
    if how == "rank":
        from scipy.stats import rankdata

        return rankdata(t)
    if how == "identity":
        return t
    if how == "log":
        return np.log(t)
    raise PetfeatError(f"PH test transform is {how!r}; choose one of {', '.join(ZPH_TRANSFORMS)}.")


def cox_zph(time, event, X: pd.DataFrame, beta, transform: str = "km") -> pd.DataFrame:
    """Proportional-hazards score test of R survival's ``cox.zph`` (version >= 3.0), Efron ties.

    Parameters
    ----------
    time, event
        Follow-up time and event indicator (1 = event) per row.
    X
        Covariates of the fitted model (one column each).
    beta
        The fitted coefficients, in the column order of ``X``.
    transform
        Time transform ``g``: ``"km"`` (R's default: 1 - left-continuous Kaplan-Meier), ``"rank"``,
        ``"identity"`` or ``"log"``; centred at its mean over the events.

    Returns
    -------
    pandas.DataFrame
        ``chisq, df, p`` per covariate and a ``GLOBAL`` row: for covariate ``j`` the score test of
        the term ``g(t) x_j`` added to the model, with the information of all coefficients and that
        term; the global test adds all ``p`` terms.
    """
    from scipy.stats import chi2

    e = np.asarray(event, dtype=np.float64)
    tt = _zph_time(time, event, transform)
    gtime = tt - tt[e == 1].mean()
    p = X.shape[1]
    _, u, imat = efron_derivatives(time, event, X.to_numpy(dtype=np.float64), beta, gtime)
    u0 = np.concatenate([np.zeros(p), u[p:]])
    rows = []
    for j in range(p):
        kk = [*range(p), p + j]
        uu = u0[kk]
        rows.append((float(np.linalg.solve(imat[np.ix_(kk, kk)], uu) @ uu), 1))
    rows.append((float(np.linalg.solve(imat, u0) @ u0), p))
    out = pd.DataFrame(rows, columns=["chisq", "df"], index=[*map(str, X.columns), "GLOBAL"])
    out["p"] = chi2.sf(out["chisq"], out["df"])
    return out


def newton_settles(time, event, X, beta, max_steps: int = 30, tol: float = 1e-8) -> tuple[bool, np.ndarray]:
    """Whether Newton-Raphson from ``beta`` settles; returns it and the coefficients where it stopped.

    A step is taken in full, halved while it lowers the likelihood; the fit has settled when every
    step is below ``tol * (1 + |beta|)``. Under a monotone likelihood (complete separation) a
    coefficient keeps growing and this returns False.
    """
    b = np.asarray(beta, dtype=np.float64).copy()
    ll, u, imat = efron_derivatives(time, event, X, b)
    for _ in range(max_steps):
        try:
            step = np.linalg.solve(imat, u)
        except np.linalg.LinAlgError:
            return False, b
        if not np.all(np.isfinite(step)):
            return False, b
        if np.all(np.abs(step) <= tol * (1 + np.abs(b))):
            return True, b
        for _half in range(20):
            ll_new, u_new, imat_new = efron_derivatives(time, event, X, b + step)
            if ll_new >= ll - 1e-12 * abs(ll):
                break
            step = step / 2
        b, ll, u, imat = b + step, ll_new, u_new, imat_new
    return False, b


def fit_cox(df: pd.DataFrame, duration: str, event: str, feature: str, covariates: Sequence[str] = (),
            how: str = "unit", ph_transform: str = "km") -> dict:
    """Multivariable Cox model of ``feature`` (transformed) adjusted for ``covariates``.

    Returns a dict with ``hr, ci_low, ci_high, p, coef, se`` of the feature, ``loglik``,
    ``concordance``, ``converged``, ``ph_test_chisq`` / ``ph_test_p`` (the feature's row of
    :func:`cox_zph`), ``ph_global_chisq`` / ``ph_global_p``, ``events_per_variable``, ``flags``
    (``not converged``, ``EPV < 10``), ``terms`` (one dict per coefficient: the covariates' HRs
    too) and the fitter's ``warnings``.

    Raises
    ------
    ModelError
        With no events, or no rows with every column given.
    """
    from lifelines import CoxPHFitter

    data = df[[duration, event, feature, *covariates]].dropna().copy()
    if not len(data):
        raise ModelError(f"no rows with {duration}, {event}, {feature}" + "".join(f", {c}" for c in covariates)
                         + " all given; check the endpoint and the feature table.")
    n_events = int(data[event].sum())
    if n_events == 0:
        raise ModelError(f"no events: all {len(data)} patients are censored for this endpoint; a hazard ratio "
                         "needs at least one event.")
    data[feature], scale = transform(data[feature], how)
    out = {"feature": feature, "transform": scale, "n": int(len(data)), "events": n_events,
           "covariates": list(covariates)}
    out["events_per_variable"] = out["events"] / (1 + len(covariates))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cph = CoxPHFitter()  # Efron ties (lifelines' method)
        cph.fit(data, duration_col=duration, event_col=event)
    names = [feature, *covariates]
    X = data[names].astype(float)
    beta = cph.params_[names].to_numpy(dtype=np.float64)
    settled, b_end = newton_settles(data[duration], data[event], X.to_numpy(), beta)
    change = np.abs(b_end - beta)
    moving = [nm for nm, c in zip(names, change, strict=True) if c > 1e-4 and c >= 0.5 * change.max()]
    flags = []
    if not settled:
        flags.append("not converged" + (f": coefficient of {', '.join(moving)} may be infinite" if moving else ""))
    if out["events_per_variable"] < MIN_EVENTS_PER_VARIABLE:
        flags.append(f"EPV {out['events_per_variable']:.1f} < {MIN_EVENTS_PER_VARIABLE:g}")
    ph = cox_zph(data[duration], data[event], X, beta, ph_transform)
    s = cph.summary
    terms = [{"term": nm, "hr": float(s.loc[nm, "exp(coef)"]), "ci_low": float(s.loc[nm, "exp(coef) lower 95%"]),
              "ci_high": float(s.loc[nm, "exp(coef) upper 95%"]), "coef": float(s.loc[nm, "coef"]),
              "se": float(s.loc[nm, "se(coef)"]), "p": float(s.loc[nm, "p"]), "ph_test_p": float(ph.loc[nm, "p"])}
             for nm in names]
    out.update({k: terms[0][k] for k in ("hr", "ci_low", "ci_high", "p", "coef", "se")},
               loglik=float(cph.log_likelihood_), concordance=float(cph.concordance_index_), converged=settled,
               ph_transform=ph_transform, ph_test_chisq=float(ph.loc[feature, "chisq"]),
               ph_test_p=float(ph.loc[feature, "p"]), ph_global_chisq=float(ph.loc["GLOBAL", "chisq"]),
               ph_global_p=float(ph.loc["GLOBAL", "p"]), flags="; ".join(flags), terms=terms,
               warnings=[f"{w.category.__name__}: {w.message}" for w in caught])
    return out


def fit_mixed(df: pd.DataFrame, score: str, feature: str, time: str, group: str, covariates: Sequence[str] = (),
              how: str = "unit") -> dict:
    """``score ~ feature + time (+ covariates)`` with a random intercept per ``group`` (REML)."""
    import statsmodels.formula.api as smf

    cols = [score, feature, time, group, *covariates]
    data = df[cols].dropna().copy()
    data[feature], scale = transform(data[feature], how, groups=data[group])
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
