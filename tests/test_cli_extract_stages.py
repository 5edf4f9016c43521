"""The stages of ``petfeat.extract.extract`` called one by one on small volumes, checked against NumPy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from petfeat.extract import (
    KEY_COLUMNS,
    LESION_COLUMNS,
    PROVENANCE_COLUMNS,
    extract,
    stage_codes,
    stage_lesions,
    stage_peaks,
    stage_reduce,
    stage_rows,
    study_input,
)
from petfeat.features import FEATURE_NAMES
from petfeat.regions import LabelLayer, normalise_spec

SPACING = (4.0, 4.0, 4.0)


@pytest.fixture
def volume():
    rng = np.random.default_rng(5)
    suv = rng.gamma(2.0, 1.0, (12, 14, 16)).astype(np.float32)
    organ = np.zeros(suv.shape, np.uint8)
    organ[2:10, 2:12, 2:8] = 1  # "liver"
    organ[2:10, 2:12, 8:14] = 2  # "bone"
    mask = np.zeros(suv.shape, bool)
    mask[3:5, 3:5, 3:5] = True  # a lesion in the liver
    mask[6:8, 8:10, 10:12] = True  # one in bone
    return suv, LabelLayer(organ, {1: "liver", 2: "bone"}), mask


REGIONS = {"liver": {"include": ["liver"]}, "bone": {"include": ["bone"]},
           "tumour": {"include": ["lesion"]}, "healthy_bone": {"include": ["bone"], "exclude": ["lesion"]}}


def test_study_input_of_an_suv_array(volume):
    suv, _, _ = volume
    study = study_input(suv, spacing=SPACING)
    assert study.stored.shape == suv.shape and np.all(study.scale == 1) and np.all(study.offset == 0)
    assert study.geometry.voxel_volume_ml == pytest.approx(0.064) and study.series is None
    assert study.keys == {"patient_id": None, "study_date": None, "series_uid": None}


def test_stage_lesions_appends_the_lesion_layer_and_counts_components_per_region(volume):
    suv, organ, mask = volume
    study = study_input(suv, spacing=SPACING)
    les = stage_lesions(study, [organ], mask)
    assert les.deferred and les.comps is None  # boolean mask, no minimum volume: components after the pass
    assert [la.namespace for la in les.layers][-1] == "lesions" and les.organ_layers == [organ]
    spec = normalise_spec(REGIONS)
    codemap, members = stage_codes(spec, les.layers, study)
    counts = les.counts(les.codes_at_lesions(codemap), members)
    assert counts == {"liver": 1, "bone": 1, "tumour": 2, "healthy_bone": 0}
    assert les.comps.n == 2 and les.settings["source"] == "mask"


def test_stage_lesions_with_a_minimum_volume_labels_components_first(volume):
    suv, organ, mask = volume
    mask = mask.copy()
    mask[0, 0, 0] = True  # one voxel, 0.064 mL: dropped by a 0.1 mL minimum
    les = stage_lesions(study_input(suv, spacing=SPACING), [organ], mask, min_lesion_ml=0.1)
    assert not les.deferred and les.comps.n == 2


def test_stage_reduce_matches_numpy_per_region(volume):
    suv, organ, mask = volume
    study = study_input(suv, spacing=SPACING)
    les = stage_lesions(study, [organ], mask)
    codemap, members = stage_codes(normalise_spec(REGIONS), les.layers, study)
    partials = stage_reduce(study, codemap, "cpu")
    expected = {"liver": organ.array == 1, "bone": organ.array == 2, "tumour": mask,
                "healthy_bone": (organ.array == 2) & ~mask}
    for name, where in expected.items():
        codes = members[name]
        assert int(partials.count[codes].sum()) == int(where.sum()), name
        assert partials.max[codes].max() == pytest.approx(float(suv[where].max()), rel=1e-6), name
        total = sum(float(partials.mean[c]) * float(partials.count[c]) for c in codes)  # per-code means x counts
        assert total == pytest.approx(float(suv[where].astype(np.float64).sum()), rel=1e-6), name


def test_stage_peaks_and_rows_compose_to_extract(volume):
    suv, organ, mask = volume
    study = study_input(suv, spacing=SPACING)
    les = stage_lesions(study, [organ], mask)
    spec = normalise_spec(REGIONS)
    codemap, members = stage_codes(spec, les.layers, study)
    partials = stage_reduce(study, codemap, "cpu")
    peaks = stage_peaks(study, codemap, members, partials, "cpu")
    assert set(peaks) == set(REGIONS) and all(np.isfinite(g) and np.isfinite(lo) for g, lo in peaks.values())
    whole = extract(suv, [organ], REGIONS, lesions=mask, spacing=SPACING, backend="cpu")
    by_region = whole.features.set_index("region")
    for name, (g, lo) in peaks.items():
        assert by_region.loc[name, "suv_peak_global"] == pytest.approx(g)
        assert by_region.loc[name, "suv_peak_local"] == pytest.approx(lo)
    rows = [{"region": n, **{f: 1.0 for f in FEATURE_NAMES if f not in ("lesion_count",)}, "status": "ok"}
            for n in REGIONS]
    settings = {"regions": spec, "suv_type": "bw", "lesions": {}}
    empty = pd.DataFrame(columns=list(LESION_COLUMNS))
    df, lesion_df = stage_rows(rows, {n: 0 for n in REGIONS}, empty, study, settings, "cpu")
    assert list(df.columns) == list(KEY_COLUMNS) + list(FEATURE_NAMES) + list(PROVENANCE_COLUMNS)
    assert df.lesion_method.iloc[0] == "none" and df.backend.iloc[0] == "cpu" and len(lesion_df) == 0
