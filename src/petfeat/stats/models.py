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


#: Smallest p written; a p below it (a z of 37 or more) is written as P_FLOOR, its true value in ``p_log10``.
P_FLOOR = 1e-300


def wald_p(coef: float, se: float) -> tuple[float, float]:
    """Two-sided Wald p of ``coef / se`` floored at :data:`P_FLOOR`, and its log10 in full (from the log tail).

    ``2 * norm.sf(|z|)`` underflows to 0 above z 38.5; the log10 holds the value at any z.
    """
    from scipy import stats

    if not (np.isfinite(coef) and np.isfinite(se) and se > 0):
        return float("nan"), float("nan")
    log_sf = float(stats.norm.logsf(abs(coef / se)))
    return max(2 * float(np.exp(log_sf)), P_FLOOR), (log_sf + float(np.log(2))) / float(np.log(10))


def fit_cox(df: pd.DataFrame, duration: str, event: str, feature: str, covariates: Sequence[str] = (),
            how: str = "unit", ph_transform: str = "km", ridge: float | None = None) -> dict:
    """Multivariable Cox model of ``feature`` (transformed) adjusted for ``covariates``.

    Returns a dict with ``hr, ci_low, ci_high, p, p_log10, coef, se`` of the feature (``p``: the Wald
    test's, floored at :data:`P_FLOOR` as the mixed models' are; ``p_log10`` in full), ``loglik``,
    ``concordance``, ``converged``, ``ph_test_chisq`` / ``ph_test_p`` (the feature's row of
    :func:`cox_zph`), ``ph_global_chisq`` / ``ph_global_p``, ``events_per_variable``, ``flag``
    (``not converged``, ``EPV < 10``), ``terms`` (one dict per coefficient: the covariates' HRs
    too) and the fitter's ``warnings``. With ``ridge`` (a lifelines ``penalizer``, L2 on the
    standardised coefficients) also ``ridge_hr, ridge_ci_low, ridge_ci_high, ridge_p`` of the
    feature from the penalised fit: a sensitivity analysis for few events, not the main result.

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
    notes = []
    if not settled:
        notes.append("not converged" + (f": coefficient of {', '.join(moving)} may be infinite" if moving else ""))
    if out["events_per_variable"] < MIN_EVENTS_PER_VARIABLE:
        notes.append(f"EPV {out['events_per_variable']:.1f} < {MIN_EVENTS_PER_VARIABLE:g}")
    ph = cox_zph(data[duration], data[event], X, beta, ph_transform)
    s = cph.summary
    terms = [{"term": nm, "hr": float(s.loc[nm, "exp(coef)"]), "ci_low": float(s.loc[nm, "exp(coef) lower 95%"]),
              "ci_high": float(s.loc[nm, "exp(coef) upper 95%"]), "coef": float(s.loc[nm, "coef"]),
              "se": float(s.loc[nm, "se(coef)"]), "ph_test_p": float(ph.loc[nm, "p"]),
              **dict(zip(("p", "p_log10"), wald_p(float(s.loc[nm, "coef"]), float(s.loc[nm, "se(coef)"])),
                         strict=True))}
             for nm in names]
    if ridge is not None:
        if not ridge > 0:
            raise PetfeatError(f"ridge is {ridge!r}; the penalizer of the sensitivity fit must be > 0 (e.g. 0.1).")
        with warnings.catch_warnings(record=True) as more:
            warnings.simplefilter("always")
            pen = CoxPHFitter(penalizer=float(ridge), l1_ratio=0.0).fit(data, duration_col=duration, event_col=event)
        caught.extend(more)
        r = pen.summary.loc[feature]
        out.update(ridge_penalizer=float(ridge), ridge_hr=float(r["exp(coef)"]),
                   ridge_ci_low=float(r["exp(coef) lower 95%"]), ridge_ci_high=float(r["exp(coef) upper 95%"]),
                   ridge_p=wald_p(float(r["coef"]), float(r["se(coef)"]))[0])
    out.update({k: terms[0][k] for k in ("hr", "ci_low", "ci_high", "p", "p_log10", "coef", "se")},
               loglik=float(cph.log_likelihood_), concordance=float(cph.concordance_index_), converged=settled,
               ph_transform=ph_transform, ph_test_chisq=float(ph.loc[feature, "chisq"]),
               ph_test_p=float(ph.loc[feature, "p"]), ph_global_chisq=float(ph.loc["GLOBAL", "chisq"]),
               ph_global_p=float(ph.loc["GLOBAL", "p"]), flag="; ".join(notes), terms=terms,
               warnings=[f"{w.category.__name__}: {w.message}" for w in caught])
    return out


DF_METHODS = ("normal", "satterthwaite")


class _Lmm:
    """REML pieces of a fitted linear mixed model as functions of its variance parameters.

    ``theta = (sigma2, lower triangle of G)``: residual variance and the random-effect covariance.
    ``deviance`` is lme4's REML criterion; ``cov_fixed`` is lme4's covariance of the fixed effects,
    ``(sum_i X_i' V_i^-1 X_i)^-1`` at ``theta``.
    """

    def __init__(self, y, X, Z, rows):
        self.y, self.X, self.Z, self.rows = y, X, Z, rows
        self.q = Z.shape[1]
        self.tril = np.tril_indices(self.q)
        self.batches = []  # groups of equal size, stacked: (y, X, Z) as (g, m), (g, m, p), (g, m, q)
        sizes = np.array([len(r) for r in rows])
        for m in np.unique(sizes):
            idx = np.stack([rows[i] for i in np.flatnonzero(sizes == m)])
            self.batches.append((y[idx], X[idx], Z[idx]))

    def pieces(self, theta):
        s2 = theta[0]
        G = np.zeros((self.q, self.q))
        G[self.tril] = theta[1:]
        G = G + np.tril(G, -1).T
        p = self.X.shape[1]
        xvx, xvy, logdet, parts = np.zeros((p, p)), np.zeros(p), 0.0, []
        for yb, Xb, Zb in self.batches:
            V = Zb @ G @ np.swapaxes(Zb, 1, 2) + s2 * np.eye(yb.shape[1])
            Vi = np.linalg.inv(V)
            logdet += float(np.linalg.slogdet(V)[1].sum())
            ViX = Vi @ Xb
            xvx += np.einsum("gmp,gmr->pr", Xb, ViX)
            xvy += np.einsum("gmp,gm->p", ViX, yb)
            parts.append((yb, Xb, Vi))
        cov = np.linalg.inv(xvx)
        beta = cov @ xvy
        quad = 0.0
        for yb, Xb, Vi in parts:
            r = yb - Xb @ beta
            quad += float(np.einsum("gm,gmn,gn->", r, Vi, r))
        dev = logdet + np.linalg.slogdet(xvx)[1] + quad + (len(self.y) - p) * np.log(2 * np.pi)
        return dev, cov, beta

    def _relative(self, par) -> np.ndarray:
        L = np.zeros((self.q, self.q))
        L[self.tril] = par
        return L @ L.T

    def profiled(self, par) -> tuple[float, float]:
        """REML criterion with sigma2 profiled out, at ``G = sigma2 L L'`` (``par``: lower triangle of L)."""
        dev, cov, beta = self.pieces(np.concatenate([[1.0], self._relative(par)[self.tril]]))
        n, p = len(self.y), self.X.shape[1]
        quad = 0.0
        for yb, Xb, Zb in self.batches:
            V = Zb @ self._relative(par) @ np.swapaxes(Zb, 1, 2) + np.eye(yb.shape[1])
            r = yb - Xb @ beta
            quad += float(np.einsum("gm,gm->", r, np.linalg.solve(V, r[..., None])[..., 0]))
        s2 = quad / (n - p)
        # pieces at sigma2 = 1 holds log|V*| + log|X'V*^-1 X| + quad + (n-p) log 2 pi
        return dev - quad + (n - p) * (1.0 + np.log(s2)), s2

    def optimise(self) -> tuple[np.ndarray, bool]:
        """Minimise the REML criterion over the relative Cholesky factor of G (sigma2 profiled out, as lme4).

        Starts from ``L = I`` (lme4's start); variances on the boundary (0) are reached. Returns
        ``theta = (sigma2, lower triangle of G)`` and whether the optimiser converged: L-BFGS-B's own
        verdict, or, where it stopped in its line search, lme4's gradient check (every absolute
        gradient of the REML criterion below 0.002).
        """
        from scipy.optimize import minimize

        def crit(par):
            try:
                return self.profiled(par)[0]
            except np.linalg.LinAlgError:
                return np.inf

        start = np.eye(self.q)[self.tril]
        best = minimize(crit, start, method="L-BFGS-B", options={"ftol": 1e-14, "gtol": 1e-8})
        x, fx = best.x, best.fun
        ok = bool(np.isfinite(fx)) and bool(best.success)
        n = len(x)
        for _ in range(20):  # Newton steps on central differences: the criterion is flat along some directions
            h = 1e-4 * np.maximum(np.abs(x), 1e-1)
            E = np.diag(h)
            g = np.array([(crit(x + E[i]) - crit(x - E[i])) / (2 * h[i]) for i in range(n)])
            H = np.empty((n, n))
            for i in range(n):
                for j in range(i, n):
                    H[i, j] = H[j, i] = (crit(x + E[i] + E[j]) - crit(x + E[i] - E[j]) - crit(x - E[i] + E[j])
                                         + crit(x - E[i] - E[j])) / (4 * h[i] * h[j])
            try:
                step = -np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                break
            if not np.all(np.isfinite(step)) or np.linalg.eigvalsh(H).min() <= 0:
                break  # at a boundary (a variance at 0) Newton does not apply: keep the quasi-Newton optimum
            f_new = crit(x + step)
            if not f_new < fx:
                break
            x, fx = x + step, f_new
            if np.all(np.abs(step) <= 1e-10 * (1 + np.abs(x))):
                break
        if not ok and np.isfinite(fx):
            # L-BFGS-B stops "abnormally" in its line search at a boundary optimum (a Cholesky entry at 0) where the
            # criterion is flat; converged by lme4's check instead: every |gradient| of the criterion below 0.002
            h = 1e-5 * np.maximum(np.abs(x), 1e-1)
            grad = [(crit(x + e) - crit(x - e)) / (2 * h[i]) for i, e in enumerate(np.diag(h))]
            ok = bool(np.all(np.isfinite(grad)) and np.max(np.abs(grad)) < 2e-3)
        s2 = self.profiled(x)[1]
        self.par = x
        return np.concatenate([[s2], (s2 * self._relative(x))[self.tril]]), ok

    def _theta(self, vp) -> np.ndarray:
        """``(sigma2, lower triangle of G)`` from lme4's variance parameters ``vp = (sigma, lower triangle of L)``."""
        return np.concatenate([[vp[0] ** 2], (vp[0] ** 2 * self._relative(vp[1:]))[self.tril]])

    def satterthwaite(self, theta, par) -> np.ndarray:
        """Satterthwaite degrees of freedom of each fixed effect, as lmerTest computes them.

        lmerTest's ``2 v^2 / (g' A g)`` on lme4's scale of the variance parameters, ``(sigma, L)`` with
        ``G = sigma^2 L L'`` (``par``: the lower triangle of ``L`` at the optimum): ``A`` is twice the
        inverse of the Hessian of the REML criterion over the eigenvectors with a positive eigenvalue
        (eigenvalues below ``1e-8`` of the largest are dropped, as lmerTest drops those below its
        tolerance), ``g`` the gradient of the fixed effect's variance. At a singular fit (a correlation
        of +-1, a variance 0) the criterion is even in the Cholesky entry at 0, so that direction adds
        nothing, where the same formula on the variance scale can give df below 1 or negative.
        """
        vp = np.concatenate([[np.sqrt(theta[0])], np.asarray(par, dtype=np.float64)])
        h = 1e-4 * np.maximum(np.abs(vp), 1e-1 * np.r_[vp[0], np.ones(len(vp) - 1)])
        n = len(vp)
        steps = np.diag(h)

        def dev(v):
            return self.pieces(self._theta(v))[0]

        H = np.zeros((n, n))
        for i in range(n):
            for j in range(i, n):
                f = [dev(vp + a * steps[i] + b * steps[j]) for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
                H[i, j] = H[j, i] = (f[0] - f[1] - f[2] + f[3]) / (4 * h[i] * h[j])
        vals, vecs = np.linalg.eigh(H)
        pos = vals > 1e-8 * max(float(vals.max()), 0.0)
        A = 2 * (vecs[:, pos] / vals[pos]) @ vecs[:, pos].T  # asymptotic covariance of vp
        cov = self.pieces(theta)[1]
        grads = np.array([(self.pieces(self._theta(vp + e))[1] - self.pieces(self._theta(vp - e))[1]) / (2 * e[i])
                          for i, e in enumerate(steps)])  # n x p x p
        out = []
        for k in range(cov.shape[0]):
            g = grads[:, k, k]
            den = float(g @ A @ g)
            out.append(2 * cov[k, k] ** 2 / den if den > 0 else np.nan)
        return np.array(out)


def boundary_text(G: np.ndarray, sigma2: float, at: str = "") -> str:
    """What is at the boundary of a singular random-effect covariance ``G``, from ``G`` itself.

    A variance at or near 0 (at most ``1e-6 * sigma2``, the singularity test's tolerance) is named with its
    value; with two variances away from 0 the boundary is their correlation at +-1 (``G`` of rank 1):
    ``intercept-slope correlation at the boundary, -1.00 (random-intercept variance 33.6 at cycle 0,
    random-slope variance 0.0913)``. ``at`` says where the intercept variance refers to (``at cycle 0``):
    with a random slope it depends on the time origin.
    """
    G = np.atleast_2d(np.asarray(G, dtype=np.float64))
    tol = 1e-6 * max(float(sigma2), 1e-300)
    names = ["random-intercept" + (f" ({at})" if at and G.shape[0] > 1 else ""), "random-slope"][:G.shape[0]]
    zero = [f"{nm} variance {G[i, i]:.3g}" for i, nm in enumerate(names) if G[i, i] <= tol]
    if zero:
        return " and ".join(zero) + " (at or near 0)"
    corr = float(G[1, 0] / np.sqrt(G[0, 0] * G[1, 1]))
    return (f"intercept-slope correlation at the boundary, {corr:+.2f} (random-intercept variance "
            f"{G[0, 0]:.3g}{' ' + at if at else ''}, random-slope variance {G[1, 1]:.3g})")


def fit_lmm(data: pd.DataFrame, formula: str, group: str, slope: str | None = None,
            df_method: str = "normal", at: str = "") -> tuple[pd.DataFrame, dict]:
    """Linear mixed model by REML (lme4's profiled criterion), reported as lme4 and lmerTest report it.

    statsmodels builds the design matrices; the variance components minimise lme4's REML criterion
    over the relative Cholesky factor of the random-effect covariance (statsmodels' own optimiser
    stalls on boundary fits, a random-slope variance near 0).

    Parameters
    ----------
    data
        One row per observation, formula-safe column names.
    formula
        Fixed effects, ``"y ~ a + b + a:b"``.
    group
        Column of the grouping factor (random intercept per group).
    slope
        A column with a random slope per group as well (``(slope | group)``), or None.
    df_method
        ``"normal"`` (Wald z) or ``"satterthwaite"`` (t with lmerTest's Satterthwaite df).
    at
        Where the random-intercept variance refers to, for the singular-fit text (``at cycle 0``).

    Returns
    -------
    (pandas.DataFrame, dict)
        Fixed effects (``estimate, se, df, ci_low, ci_high, p`` per term; SEs from
        ``(X' V^-1 X)^-1`` at the REML variance components, as lme4), and ``var_intercept``,
        ``var_slope``, ``cov_intercept_slope``, ``var_residual``, ``reml_criterion`` (lme4's),
        ``converged``, ``singular``, ``boundary`` (what is at the boundary of a singular fit,
        :func:`boundary_text`; "" otherwise), ``warnings``.
    """
    import statsmodels.formula.api as smf
    from scipy import stats

    if df_method not in DF_METHODS:
        raise PetfeatError(f"df_method is {df_method!r}; choose one of {', '.join(DF_METHODS)}.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm(formula, data, groups=data[group], re_formula=f"~{slope}" if slope else None)
    lmm = _Lmm(np.asarray(model.endog, dtype=np.float64), np.asarray(model.exog, dtype=np.float64),
               np.asarray(model.exog_re, dtype=np.float64), [np.asarray(v) for v in model.row_indices.values()])
    with warnings.catch_warnings(record=True) as more:
        warnings.simplefilter("always")
        theta, converged = lmm.optimise()
    notes = [f"{w.category.__name__}: {w.message}" for w in [*caught, *more]]
    if not converged:
        notes.append("the REML optimiser did not converge")
    G = np.zeros((lmm.q, lmm.q))
    G[lmm.tril] = theta[1:]
    G = G + np.tril(G, -1).T
    singular = bool(np.linalg.eigvalsh(G).min() <= 1e-6 * max(float(theta[0]), 1e-300))
    boundary = boundary_text(G, float(theta[0]), at) if singular else ""
    if singular:
        notes.append(f"boundary (singular) fit: {boundary}")
    dev, cov, beta = lmm.pieces(theta)
    se = np.sqrt(np.diag(cov))
    dfs = lmm.satterthwaite(theta, lmm.par) if df_method == "satterthwaite" else np.full(len(beta), np.inf)
    bad = ~(dfs >= 1)  # NaN too: a df that is not a number >= 1 gives no t test
    normal = np.isinf(dfs)
    safe_df = np.where(normal | bad, 1.0, dfs)
    q = np.where(normal, stats.norm.ppf(0.975), stats.t.ppf(0.975, safe_df))
    z = np.abs(beta / se)
    log_sf = np.where(normal, stats.norm.logsf(z), stats.t.logsf(z, safe_df))
    p_log10 = (log_sf + np.log(2)) / np.log(10)
    pval = np.maximum(2 * np.exp(log_sf), P_FLOOR)  # below P_FLOOR only p_log10 holds the value
    ci_low, ci_high = beta - q * se, beta + q * se
    pval, ci_low, ci_high, p_log10 = (np.where(bad, np.nan, v) for v in (pval, ci_low, ci_high, p_log10))
    names = list(model.exog_names)
    if bad.any():
        notes.append("Satterthwaite df undefined (" + ", ".join(f"{nm}: {d:.3g}" for nm, d in
                                                               zip(names, dfs, strict=True) if not d >= 1)
                     + "): no t test, no interval")
    table = pd.DataFrame({"estimate": beta, "se": se, "df": dfs, "ci_low": ci_low, "ci_high": ci_high, "p": pval,
                          "p_log10": p_log10}, index=names)
    extra = {"var_intercept": float(G[0, 0]), "var_slope": float(G[1, 1]) if slope else np.nan,
             "cov_intercept_slope": float(G[1, 0]) if slope else np.nan, "var_residual": float(theta[0]),
             "reml_criterion": float(dev), "converged": converged, "singular": singular, "boundary": boundary,
             "warnings": notes}
    return table, extra


def fit_mixed(df: pd.DataFrame, score: str, feature: str, time: str, group: str, covariates: Sequence[str] = (),
              how: str = "unit", random_slope: bool = False, interaction: bool = False,
              df_method: str = "normal", centre_time: float | None = None) -> dict:
    """Linear mixed model ``score ~ feature + time (+ feature:time) (+ covariates)``, REML (:func:`fit_lmm`).

    Parameters
    ----------
    random_slope
        A random slope for ``time`` beside the random intercept per ``group`` (``(time | group)``).
    interaction
        Add ``feature x time``: whether the feature predicts the change per unit of ``time``.
    df_method
        ``"normal"``: Wald z tests and intervals; ``"satterthwaite"``: t with Satterthwaite df
        (lmerTest's, :meth:`_Lmm.satterthwaite`).
    centre_time
        Fit on ``time - centre_time``: with an interaction the feature's main effect is then its effect
        at ``time = centre_time`` (at the uncentred time 0 it would be an extrapolation when time
        starts at 1). The fit itself (likelihood, interaction, variance structure) does not change.

    Returns
    -------
    dict
        The feature's ``estimate, se, df, ci_low, ci_high, p, p_log10``, the same for ``time``
        (``time_*``) and, with ``interaction``, for ``feature x time`` (``interaction_*``); the
        variance components (``var_intercept`` and ``cov_intercept_slope`` at ``time = var_intercept_at``,
        the time origin of the fit: ``centre_time``, else 0; with a random slope they depend on it),
        ``singular`` (a random-effect covariance at the boundary; ``boundary`` says what is there),
        ``reml_criterion``, ``converged``, ``formula``, ``time_centre`` and the fitter's ``warnings``.
        A p below :data:`P_FLOOR` is written as ``P_FLOOR``; ``p_log10`` holds its log10 in full.
    """
    cols = list(dict.fromkeys([score, feature, time, group, *covariates]))
    data = df[cols].dropna().copy()
    data[feature], scale = transform(data[feature], how, groups=data[group])
    if centre_time is not None:
        data[time] = data[time].astype(float) - float(centre_time)
    safe = {c: f"v{i}" for i, c in enumerate(cols)}  # formula-safe names (features are 'region.feature')
    data = data.rename(columns=safe)
    sf, st = safe[feature], safe[time]
    formula = (f"{safe[score]} ~ {sf} + {st}" + (f" + {sf}:{st}" if interaction else "")
               + "".join(f" + {safe[c]}" for c in covariates))
    origin = float(centre_time) if centre_time is not None else 0.0
    table, extra = fit_lmm(data, formula, safe[group], st if random_slope else None, df_method,
                           at=f"at {time} {origin:.3g}")
    out = {"feature": feature, "transform": scale, "n_obs": int(len(data)),
           "n_groups": int(data[safe[group]].nunique()), "df_method": df_method, "time_centre": origin,
           "var_intercept_at": origin}
    for prefix, name in (("", sf), ("time_", st), ("interaction_", f"{sf}:{st}")):
        if name in table.index:
            out.update({f"{prefix}{k}": float(v) for k, v in table.loc[name].items()})
    out.update(extra)
    re = f"({time} | {group})" if random_slope else f"(1 | {group})"
    out["formula"] = (f"{score} ~ {feature} + {time}" + (f" + {feature}:{time}" if interaction else "")
                      + "".join(f" + {c}" for c in covariates) + f" + {re}"
                      + (f"; {time} centred at {centre_time:g}" if centre_time is not None else ""))
    return out


def fdr(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    return multipletests(p, method="fdr_bh")[1] if len(p) else p


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error rate)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    return multipletests(p, method="holm")[1] if len(p) else p


def format_hr(r: dict) -> str:
    """``HR = 0.74, 95% CI 0.56 to 0.98, p = 0.033``: the way the study reports it.

    The interval is written "lo to hi", as the report's tables and forest plots write it
    (:func:`petfeat.report.tables.fmt_ci`): a hyphen would read as a minus sign before a negative bound.
    """
    p = f"p = {r['p']:.3f}" if r["p"] >= 0.001 else "p < 0.001"
    return f"HR = {r['hr']:.2f}, 95% CI {r['ci_low']:.2f} to {r['ci_high']:.2f}, {p}"
