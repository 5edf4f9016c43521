"""Strict validation of a study spec (YAML): every key known, every value of the right type and range.

The spec's structure is declared as pydantic models that forbid unknown keys: a mistyped key
(``covariate:`` for ``covariates:``) is an error that names the entry and the closest allowed key,
never an option silently ignored. After the structure, the values are checked against what the
statistics code accepts (endpoint types, CTCAE tests, transforms, degrees-of-freedom methods...).
Every error is one line: ``FILE: ENTRY: what is wrong; what to write instead``.

Keys, per level (defaults in brackets):

* top level: ``name``, ``endpoints`` (name -> endpoint), ``analyses`` (list), ``multiplicity``
  (``methods``: ``bh`` and/or ``holm``; ``family``: ``study`` or ``analysis``), ``fdr`` (bool, used
  only without ``multiplicity``), ``ridge`` (penalizer of every Cox model's ridge sensitivity fit),
  ``ph_transform`` (cox.zph time transform [km]);
* ``first_grade`` endpoint: ``type``, ``tests``, ``min_grade`` [3], ``treatment_emergent`` [false],
  ``death`` [competing], ``death_window_days`` [30; null: any time];
* ``worsening`` endpoint: ``type``, ``score``, ``direction``, ``absolute``, ``relative``, ``strict``
  [true], ``confirmed`` [false], ``zero_baseline`` [absolute], ``death`` [censor], ``death_window_days`` [30];
* ``cox`` analysis: ``name``, ``model``, ``region``, ``features``, ``endpoint``, ``covariates``
  (columns of the patients table; ``baseline_score``, for a worsening endpoint only, is the
  endpoint's baseline score), ``transform`` [unit], ``ridge``;
* ``mixed`` analysis: ``name``, ``model``, ``region``, ``features``, ``score``, ``time`` [cycle],
  ``covariates``, ``transform`` [unit], ``random_slope`` [false], ``interaction`` [false] (the
  tested term is then feature x time, time centred at its mean), ``df`` [normal].
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from petfeat.errors import PetfeatError
from petfeat.features import FEATURES
from petfeat.stats.ctcae import TESTS as CTCAE_TESTS
from petfeat.stats.endpoints import DEATH_RULES
from petfeat.stats.models import DF_METHODS, TRANSFORMS, ZPH_TRANSFORMS

ENDPOINT_TYPES = ("first_grade", "worsening")
MODELS = ("cox", "mixed")
MULTIPLICITY_METHODS = ("bh", "holm")
FAMILIES = ("study", "analysis")
ZERO_BASELINE = ("absolute", "any")
#: Features an analysis can name: the registry's numeric features.
ANALYSABLE_FEATURES = tuple(f.name for f in FEATURES if f.dtype != "bool")
#: Covariate of a worsening endpoint's Cox model: the endpoint's baseline score (regression to the mean).
BASELINE_SCORE = "baseline_score"

Number = StrictInt | StrictFloat


class StudySpecError(PetfeatError):
    """A study spec is invalid; the message names the entry and the allowed values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Multiplicity(_Strict):
    methods: StrictStr | list[StrictStr] = ["bh"]
    family: StrictStr = "study"


class _Spec(_Strict):
    name: StrictStr | None = None
    endpoints: dict[StrictStr, Any] | None = None
    analyses: list[Any]
    multiplicity: _Multiplicity | None = None
    fdr: StrictBool = True
    ridge: Number | None = None
    ph_transform: StrictStr = "km"


class _FirstGrade(_Strict):
    type: StrictStr
    tests: list[StrictStr] = []
    min_grade: StrictInt = 3
    treatment_emergent: StrictBool = False
    death: StrictStr = "competing"
    death_window_days: Number | None = None


class _Worsening(_Strict):
    type: StrictStr
    score: StrictStr | None = None
    direction: StrictStr | None = None
    absolute: Number | None = None
    relative: Number | None = None
    strict: StrictBool = True
    confirmed: StrictBool = False
    zero_baseline: StrictStr = "absolute"
    death: StrictStr = "censor"
    death_window_days: Number | None = None


class _Analysis(_Strict):
    name: StrictStr | None = None
    model: StrictStr
    region: StrictStr
    features: list[StrictStr]
    covariates: list[StrictStr] = []
    transform: StrictStr = "unit"


class _Cox(_Analysis):
    endpoint: StrictStr | None = None
    ridge: Number | None = None


class _Mixed(_Analysis):
    score: StrictStr | None = None
    time: StrictStr = "cycle"
    random_slope: StrictBool = False
    interaction: StrictBool = False
    df: StrictStr = "normal"


_ENDPOINT_MODELS = {"first_grade": _FirstGrade, "worsening": _Worsening}
_ANALYSIS_MODELS = {"cox": _Cox, "mixed": _Mixed}


def _keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _unknown_key(key: str, model: type[BaseModel], what: str, others: dict[str, type[BaseModel]]) -> str:
    """The message for a key ``model`` does not have: the closest key, or which other kind has it."""
    allowed = _keys(model)
    text = f"unknown key {key!r}"
    close = difflib.get_close_matches(key, allowed, 1, 0.6)
    owners = [kind for kind, m in others.items() if m is not model and key in m.model_fields]
    if owners:
        text += f" ({key!r} is a key of a {' or '.join(owners)})"
    elif close:
        text += f"; did you mean {close[0]!r}?"
    return f"{text} (keys of a{'n' if what[0] in 'aeiou' else ''} {what}: {', '.join(allowed)})"


def _describe(exc: ValidationError, model: type[BaseModel], what: str,
              others: dict[str, type[BaseModel]] | None = None) -> str:
    """The first error of ``exc`` as one line (and how many more there are)."""
    tags = ("str", "list[str]", "int", "float")
    msgs, seen = [], set()
    for err in exc.errors():
        loc = [str(x) for x in err["loc"] if not (isinstance(x, str) and x in tags)]
        if tuple(loc) in seen:  # a value refused by each member of a union (int | float) is one error
            continue
        seen.add(tuple(loc))
        if {"int", "float"} & set(err["loc"]):
            err = {**err, "msg": "Input should be a number"}
        key = loc[0] if loc else ""
        if err["type"] == "extra_forbidden" and len(loc) == 1:
            msgs.append(_unknown_key(key, model, what, others or {}))
        elif err["type"] == "missing":
            msgs.append(f"{key!r} is missing")
        elif err["type"] == "extra_forbidden":
            sub = model.model_fields[loc[0]].annotation
            sub = next((a for a in getattr(sub, "__args__", (sub,)) if isinstance(a, type)
                        and issubclass(a, BaseModel)), None)
            allowed = f" (keys: {', '.join(_keys(sub))})" if sub else ""
            close = difflib.get_close_matches(loc[-1], _keys(sub), 1, 0.6) if sub else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msgs.append(f"{'.'.join(loc[:-1])}: unknown key {loc[-1]!r}{hint}{allowed}")
        else:
            msgs.append(f"{'.'.join(loc) or 'value'} is {err.get('input')!r}: {err['msg'].lower()}")
    more = f" (and {len(msgs) - 1} more)" if len(msgs) > 1 else ""
    return msgs[0] + more


def _choose(value, allowed, what: str) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], 1, 0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{what} is {value!r}; choose one of {', '.join(map(str, allowed))}{hint}"


def validate_study(spec: Any, where: str = "study spec") -> dict:
    """Check a study spec (the parsed YAML) strictly; return it unchanged.

    Parameters
    ----------
    spec : object
        The parsed YAML document.
    where : str
        How to name the spec in messages (its file name).

    Returns
    -------
    dict
        ``spec`` itself (not a copy): the statistics code reads the mapping as written.

    Raises
    ------
    StudySpecError
        One line naming the entry, what is wrong and what is allowed ("did you mean" for a mistyped key).
    """
    def fail(msg: str):
        raise StudySpecError(f"{where}: {msg}")

    if not isinstance(spec, dict) or "analyses" not in spec:
        extra = ""
        if isinstance(spec, dict):
            unknown = [k for k in spec if k not in _Spec.model_fields]
            extra = "".join(f"; {_unknown_key(str(k), _Spec, 'study spec', {})}" for k in unknown[:3])
        fail(f"a study spec needs 'endpoints' and 'analyses'{extra}.")
    try:
        top = _Spec.model_validate(spec)
    except ValidationError as exc:
        fail(_describe(exc, _Spec, "study spec") + ".")
    endpoints = top.endpoints or {}
    for name, e in endpoints.items():
        label = f"endpoint {name!r}"
        if not isinstance(e, dict):
            fail(f"{label} is {e!r}; give a mapping with 'type' ({', '.join(ENDPOINT_TYPES)}) and its keys.")
        if e.get("type") not in ENDPOINT_TYPES:
            fail(f"endpoint {name!r} has type {e.get('type')!r}; choose one of {', '.join(ENDPOINT_TYPES)}.")
        try:
            ep = _ENDPOINT_MODELS[e["type"]].model_validate(e)
        except ValidationError as exc:
            fail(f"{label}: " + _describe(exc, _ENDPOINT_MODELS[e["type"]], f"{e['type']} endpoint",
                                          {f"{k} endpoint": m for k, m in _ENDPOINT_MODELS.items()}) + ".")
        if ep.death not in DEATH_RULES:
            fail(f"endpoint {name!r}: death is {ep.death!r}; choose one of {', '.join(DEATH_RULES)} (competing: "
                 "cause-specific Cox, Aalen-Johansen incidence).")
        if ep.death_window_days is not None and not ep.death_window_days >= 0:
            fail(f"endpoint {name!r}: death_window_days is {ep.death_window_days!r}; give the days after the last "
                 "assessment within which a death ends follow-up (>= 0, e.g. 30), or null for any time.")
        if isinstance(ep, _FirstGrade):
            unknown = [t for t in ep.tests if t not in CTCAE_TESTS]
            if unknown or not ep.tests:
                fail(f"endpoint {name!r}: tests {unknown or '(none)'}; choose from {', '.join(CTCAE_TESTS)}.")
            if not 1 <= ep.min_grade <= 4:
                fail(f"endpoint {name!r}: min_grade is {ep.min_grade}; CTCAE lab grades are 1 to 4.")
        else:
            if ep.direction not in ("decrease", "increase") or ep.score is None:
                fail(f"worsening endpoint {name!r} needs 'score' and 'direction' (decrease or increase).")
            if ep.absolute is None and ep.relative is None:
                fail(f"worsening endpoint {name!r} needs 'absolute' and/or 'relative'.")
            for key in ("absolute", "relative"):
                v = getattr(ep, key)
                if v is not None and not v > 0:
                    fail(f"worsening endpoint {name!r}: {key} is {v!r}; give a threshold > 0.")
            if ep.zero_baseline not in ZERO_BASELINE:
                fail(f"worsening endpoint {name!r}: " + _choose(ep.zero_baseline, ZERO_BASELINE, "zero_baseline")
                     + ".")
    m = top.multiplicity
    methods = ([m.methods] if isinstance(m.methods, str) else list(m.methods)) if m else []
    if m and (not set(methods) <= set(MULTIPLICITY_METHODS) or m.family not in FAMILIES):
        fail(f"multiplicity is methods {methods}, family {m.family!r}; methods are 'bh' (Benjamini-Hochberg) "
             "and/or 'holm', family 'study' (all tests) or 'analysis'.")
    if top.ph_transform not in ZPH_TRANSFORMS:
        fail(f"ph_transform is {top.ph_transform!r}; choose one of {', '.join(ZPH_TRANSFORMS)}.")
    if top.ridge is not None and not top.ridge > 0:
        fail(f"ridge is {top.ridge!r}; give the penalizer of the ridge sensitivity fit, a number > 0 (e.g. 0.1), "
             "or leave it out.")
    for i, a in enumerate(top.analyses):
        name = a.get("name") if isinstance(a, dict) else None
        label = f"analyses[{i}] ({name!r})" if name else f"analyses[{i}]"
        if not isinstance(a, dict):
            fail(f"{label} is {a!r}; give a mapping with 'model', 'region' and 'features'.")
        if a.get("model") not in MODELS:
            fail(f"{label}: model is {a.get('model')!r}; choose one of {', '.join(MODELS)}.")
        kind = _ANALYSIS_MODELS[a["model"]]
        try:
            an = kind.model_validate(a)
        except ValidationError as exc:
            fail(f"{label}: " + _describe(exc, kind, f"{a['model']} analysis",
                                          {f"{k} analysis": mm for k, mm in _ANALYSIS_MODELS.items()}) + ".")
        if an.transform not in TRANSFORMS:
            fail(f"{label}: transform {an.transform!r}; choose one of {', '.join(TRANSFORMS)}.")
        if isinstance(an, _Cox):
            if an.endpoint not in endpoints:
                fail(f"{label}: endpoint {an.endpoint!r} is not defined under 'endpoints' ({', '.join(endpoints)}).")
            if BASELINE_SCORE in an.covariates and endpoints[an.endpoint].get("type") != "worsening":
                fail(f"{label}: covariate {BASELINE_SCORE!r} is the baseline score of a worsening endpoint; endpoint "
                     f"{an.endpoint!r} is {endpoints[an.endpoint].get('type')!r}: remove it or name a column of the "
                     "patients table.")
            if an.ridge is not None and not an.ridge > 0:
                fail(f"{label}: ridge is {an.ridge!r}; give the penalizer of the ridge sensitivity fit, a number > 0 "
                     "(e.g. 0.1), or leave it out.")
        else:
            if BASELINE_SCORE in an.covariates:
                fail(f"{label}: covariate {BASELINE_SCORE!r} is for Cox models of a worsening endpoint; a mixed model "
                     "takes columns of the patients table.")
            if an.df not in DF_METHODS:
                fail(f"{label}: df is {an.df!r}; choose one of {', '.join(DF_METHODS)}.")
            if an.score is None:
                fail(f"{label}: a mixed model needs 'score' (an instrument of the scores table).")
        if not an.features:
            fail(f"{label}: 'features' is empty; name at least one of {', '.join(ANALYSABLE_FEATURES)}.")
        for feat in an.features:
            if feat not in ANALYSABLE_FEATURES:
                fail(f"{label}: " + _choose(feat, ANALYSABLE_FEATURES, "feature") + ".")
    return spec


def read_study(path: str | Path, where: str | None = None) -> dict:
    """Read a study spec file and validate it (:func:`validate_study`).

    A missing or unreadable file and malformed YAML are a one-line :class:`StudySpecError` too.
    """
    import yaml

    path = Path(path)
    where = where or str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StudySpecError(f"{where}: no such study spec file; give a YAML file (or none: the shipped "
                             "177Lu-PSMA study).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudySpecError(f"{where}: the study spec cannot be read ({exc}).") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudySpecError(f"{where}:{at} not valid YAML ({problem}); fix the indentation or quoting.") from None
    return validate_study(spec, where)
