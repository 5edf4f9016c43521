"""Questionnaire scores from item responses: FACIT (FACT-G, FACT-P), BPI-SF, xerostomia.

Item responses come as a long table ``patient_id, date, instrument, item, response`` or as a
wide mapping item -> response for one assessment. Missing items are NaN.

* FACIT subscales: items 0-4; reversed items scored ``4 - response``; a subscale is prorated
  (``sum x n_items / n_answered``) when more than half of its items are answered; FACT-G (0-108)
  and FACT-P (0-156) totals need every subscale and an overall item response rate above 80%.
  The FACT-G and FACT-P (version 4) keys are built in, from the FACIT scoring guidelines
  (facit.org; the same keys as the FACTscorer package on CRAN): the Prostate Cancer Subscale (PCS) has
  12 items, C2 C6 P1 P2 P3 P4 P5 P6 P7 BL2 P8 BL5, of which C2 P1 P2 P3 P6 P7 BL2 P8 are reversed
  (0-48). FACT-P total = FACT-G + PCS (0-156); trial outcome index TOI = PWB + FWB + PCS (0-104).
  ``pcs_key`` overrides the PCS key for another version of the instrument.
* BPI-SF: pain severity = mean of items 3-6 (worst, least, average, now; all four needed);
  interference = mean of items 9A-9G when at least 4 of the 7 are answered; worst pain = item 3.
* Xerostomia: ``xq8`` = the 8-item Xerostomia Questionnaire, items 0-10, summed and scaled to 0-100
  (all items needed); ``xi11`` = Thomson's Xerostomia Inventory, 11 items scored 1-5 (never to very
  often), summed (11-55; all needed; Thomson et al., Community Dent Health 1999;16:12-17).

:data:`ITEMS` lists each instrument's item names; an item name outside it is refused with the closest one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from petfeat.errors import PetfeatError

#: FACT-G (version 4) items per subscale, and whether each is reverse-scored.
FACT_G = {
    "pwb": {f"GP{i}": True for i in range(1, 8)},
    "swb": {f"GS{i}": False for i in range(1, 8)},
    "ewb": {"GE1": True, "GE2": False, "GE3": True, "GE4": True, "GE5": True, "GE6": True},
    "fwb": {f"GF{i}": False for i in range(1, 8)},
}
#: FACT-P (version 4) Prostate Cancer Subscale items, and whether each is reverse-scored.
FACT_P_PCS = {"C2": True, "C6": False, "P1": True, "P2": True, "P3": True, "P4": False, "P5": False, "P6": True,
              "P7": True, "BL2": True, "P8": True, "BL5": False}
BPI_SEVERITY = ("3", "4", "5", "6")
BPI_INTERFERENCE = ("9A", "9B", "9C", "9D", "9E", "9F", "9G")
#: Item names per item-level instrument (upper case). BPI-SF items 1-2 and 7-8 (pain today, body diagram,
#: treatments, relief) are known but not scored.
ITEMS = {
    "fact_g": tuple(i for key in FACT_G.values() for i in key),
    "fact_p": tuple(i for key in FACT_G.values() for i in key) + tuple(FACT_P_PCS),
    "bpi": ("1", "2") + BPI_SEVERITY + ("7", "8") + BPI_INTERFERENCE,
    "xq8": tuple(str(i) for i in range(1, 9)),
    "xi11": tuple(str(i) for i in range(1, 12)),
}


def _get(responses: Mapping, item: str) -> float:
    v = responses.get(item, np.nan)
    return float(v) if v is not None else np.nan


def facit_subscale(responses: Mapping, key: Mapping[str, bool], lo: int = 0, hi: int = 4) -> tuple[float, int]:
    """Prorated FACIT subscale score and the number of items answered (NaN when half or fewer)."""
    scores, answered = [], 0
    for item, rev in key.items():
        r = _get(responses, item)
        if np.isnan(r):
            continue
        if not lo <= r <= hi:
            raise PetfeatError(f"FACIT item {item} = {r}: responses must be {lo}-{hi}; leave a missing item "
                               "empty (not 8 or 9).")
        scores.append(hi - r if rev else r)
        answered += 1
    if answered * 2 <= len(key):
        return np.nan, answered
    return float(np.sum(scores)) * len(key) / answered, answered


def fact_scores(responses: Mapping, pcs_key: Mapping[str, bool] | None = FACT_P_PCS) -> dict[str, float]:
    """FACT-G subscales and total, and (unless ``pcs_key`` is None) the PCS, the FACT-P total and the TOI.

    Parameters
    ----------
    responses
        item name (``GP1`` ... ``GF7``, ``C2`` ... ``BL5``) -> response 0-4; missing items absent or NaN.
    pcs_key
        PCS item -> reversed; the built-in FACT-P version 4 key by default, None for FACT-G only.

    Returns
    -------
    dict
        ``pwb, swb, ewb, fwb, fact_g`` and, with a PCS key, ``pcs, fact_p, fact_p_toi``; NaN where the
        prorating rules (more than half of a subscale's items, more than 80% of all items) are not met.
    """
    out, answered, n_items = {}, 0, 0
    keys = dict(FACT_G)
    if pcs_key is not None:
        if len(pcs_key) != 12:
            raise PetfeatError(f"the PCS key has {len(pcs_key)} items; the FACT-P Prostate Cancer Subscale has 12.")
        keys["pcs"] = dict(pcs_key)
    for name, key in keys.items():
        out[name], a = facit_subscale(responses, key)
        answered += a
        n_items += len(key)
    g_items = sum(len(k) for k in FACT_G.values())
    g_answered = sum(facit_subscale(responses, k)[1] for k in FACT_G.values())
    g_ok = g_answered > 0.8 * g_items and not any(np.isnan(out[s]) for s in FACT_G)
    out["fact_g"] = sum(out[s] for s in FACT_G) if g_ok else np.nan
    if pcs_key is not None:
        ok = answered > 0.8 * n_items and not any(np.isnan(out[s]) for s in keys)
        # The FACT-P total has its own 80% rule over all 39 items: it does not need the FACT-G total's.
        out["fact_p"] = sum(out[s] for s in keys) if ok else np.nan
        out["fact_p_toi"] = out["pwb"] + out["fwb"] + out["pcs"]  # NaN when a subscale is
    return out


def fact_p_total(responses: Mapping, pcs_key: Mapping[str, bool] = FACT_P_PCS) -> float:
    """FACT-P total (0-156) of one assessment; NaN when the prorating rules are not met."""
    return fact_scores(responses, pcs_key)["fact_p"]


def bpi_scores(responses: Mapping) -> dict[str, float]:
    """BPI-SF scores of one assessment: severity, interference and worst pain.

    ``bpi_severity``: mean of items 3-6 (all needed); ``bpi_interference``: mean of 9A-9G (at least
    4 answered); ``bpi_worst``: item 3, worst pain in the last 24 hours (NaN when unanswered).
    """
    sev = [_get(responses, i) for i in BPI_SEVERITY]
    inter = [_get(responses, i) for i in BPI_INTERFERENCE]
    for item, v in zip(BPI_SEVERITY + BPI_INTERFERENCE, sev + inter, strict=True):
        if not np.isnan(v) and not 0 <= v <= 10:
            raise PetfeatError(f"BPI item {item} = {v}: responses must be 0-10.")
    answered = [v for v in inter if not np.isnan(v)]
    return {"bpi_severity": float(np.mean(sev)) if not np.isnan(sev).any() else np.nan,
            "bpi_interference": float(np.mean(answered)) if len(answered) >= 4 else np.nan,
            "bpi_worst": sev[0]}


def xerostomia_score(responses: Mapping, instrument: str) -> float:
    """``xq8``: 8 items 0-10 summed and scaled to 0-100; ``xi11``: 11 items 1-5 summed (11-55)."""
    if instrument == "xq8":
        items, lo, hi = [f"{i}" for i in range(1, 9)], 0, 10
    elif instrument == "xi11":
        items, lo, hi = [f"{i}" for i in range(1, 12)], 1, 5
    else:
        raise PetfeatError(f"xerostomia instrument is {instrument!r}; choose 'xq8' or 'xi11'.")
    vals = [_get(responses, i) for i in items]
    for item, v in zip(items, vals, strict=True):
        if not np.isnan(v) and not lo <= v <= hi:
            raise PetfeatError(f"{instrument} item {item} = {v}: responses must be {lo}-{hi}.")
    if np.isnan(vals).any():
        return np.nan
    total = float(np.sum(vals))
    return total * 100.0 / (10 * len(items)) if instrument == "xq8" else total
