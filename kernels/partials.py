"""Per-code partial statistics and their associative merge (a monoid).

A partial holds, for each code, ``count``, ``mean``, ``m2`` (sum of squared deviations from the
mean), ``min``, ``max``, ``argmin``, ``argmax`` (flat voxel index, smallest index on ties) and
``nan_count``. Two partials merge with Chan et al.'s pairwise update, so chunked, streamed and
multi-device reductions all use :func:`merge` / :func:`merge_stack`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

INDEX_NONE = np.iinfo(np.int64).max


@dataclass
class Partials:
    """Per-code partial statistics; every array has shape ``(n_codes,)``."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    argmin: np.ndarray
    argmax: np.ndarray
    nan_count: np.ndarray

    @classmethod
    def empty(cls, n_codes: int) -> Partials:
        """The identity of :func:`merge`."""
        return cls(
            count=np.zeros(n_codes, np.int64), mean=np.zeros(n_codes), m2=np.zeros(n_codes),
            min=np.full(n_codes, np.inf), max=np.full(n_codes, -np.inf),
            argmin=np.full(n_codes, INDEX_NONE, np.int64), argmax=np.full(n_codes, INDEX_NONE, np.int64),
            nan_count=np.zeros(n_codes, np.int64),
        )

    @property
    def n_codes(self) -> int:
        """Number of codes."""
        return int(self.count.shape[0])


def merge(a: Partials, b: Partials) -> Partials:
    """Merge two partials code by code (associative; ties keep the smaller voxel index)."""
    n = a.count + b.count
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = b.mean - a.mean
        wb = np.where(n > 0, b.count / np.maximum(n, 1), 0.0)
        mean = np.where(n > 0, a.mean + delta * wb, 0.0)
        m2 = a.m2 + b.m2 + delta * delta * np.where(n > 0, a.count * wb, 0.0)
    mean = np.where(b.count == 0, a.mean, np.where(a.count == 0, b.mean, mean))
    m2 = np.where(b.count == 0, a.m2, np.where(a.count == 0, b.m2, m2))
    take_b_max = (b.max > a.max) | ((b.max == a.max) & (b.argmax < a.argmax))
    take_b_min = (b.min < a.min) | ((b.min == a.min) & (b.argmin < a.argmin))
    return Partials(
        count=n, mean=mean, m2=m2,
        min=np.where(take_b_min, b.min, a.min), max=np.where(take_b_max, b.max, a.max),
        argmin=np.where(take_b_min, b.argmin, a.argmin), argmax=np.where(take_b_max, b.argmax, a.argmax),
        nan_count=a.nan_count + b.nan_count,
    )


def merge_stack(count, mean, m2, vmin, vmax, argmin, argmax, nan_count) -> Partials:
    """Merge partials stacked along axis 0 (``(n_parts, n_codes)`` arrays) into one, vectorised.

    Uses the closed form of the pairwise merge over all parts at once:
    ``n = sum n_k``, ``mean = sum n_k mean_k / n``, ``M2 = sum M2_k + n_k (mean_k - mean)^2``.
    Ties in min/max keep the smallest voxel index, as in :func:`merge`.
    """
    count = np.asarray(count, np.int64)
    n = count.sum(axis=0)
    safe = np.maximum(n, 1)
    with np.errstate(invalid="ignore"):
        mean_all = np.where(n > 0, (count * np.where(count > 0, mean, 0.0)).sum(axis=0) / safe, 0.0)
        dev = np.where(count > 0, mean - mean_all, 0.0)
        m2_all = (np.where(count > 0, m2, 0.0) + count * dev * dev).sum(axis=0)
    vmax_all = vmax.max(axis=0)
    vmin_all = vmin.min(axis=0)
    amax = np.where(vmax == vmax_all, argmax, INDEX_NONE).min(axis=0)
    amin = np.where(vmin == vmin_all, argmin, INDEX_NONE).min(axis=0)
    return Partials(count=n, mean=mean_all, m2=m2_all, min=vmin_all, max=vmax_all, argmin=amin, argmax=amax,
                    nan_count=np.asarray(nan_count, np.int64).sum(axis=0))


def combine_codes(p: Partials, codes: np.ndarray) -> Partials:
    """Merge the partials of several codes (a region) into a single-entry partial."""
    out = Partials.empty(1)
    for c in np.asarray(codes, dtype=np.int64):
        one = Partials(*(getattr(p, f.name)[c:c + 1] for f in fields(p)))
        out = merge(out, one)
    return out
