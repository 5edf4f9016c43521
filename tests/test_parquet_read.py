"""petfeat's Parquet reads: pandas' table, without a Python file object in pyarrow's hands.

A Python file object given to pyarrow is read ahead on pyarrow's I/O threads into buffers that wrap
Python objects; one released there while the interpreter exits aborted a batch client after its
outputs were written (exit -6; see :mod:`petfeat.io.parquet`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from petfeat.features import write_parquet
from petfeat.io.parquet import read_parquet

SRC = Path(__file__).resolve().parents[1]


@pytest.fixture()
def table(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"study_id": [f"s{i:03d}" for i in range(50)], "region": rng.choice(["bone", "tumor"], 50),
                       "suv_mean": rng.gamma(2.0, 1.5, 50), "lesion_count": pd.array(rng.integers(0, 9, 50),
                                                                                      dtype="Int64"),
                       "when": pd.date_range("2026-01-01", periods=50, freq="D")})
    df.loc[3, "suv_mean"] = np.nan
    df.loc[5, "lesion_count"] = pd.NA
    path = tmp_path / "features.parquet"
    write_parquet(df, path)
    return path


def test_same_table_as_pandas(table, monkeypatch):
    got, want = read_parquet(table), pd.read_parquet(table)
    pd.testing.assert_frame_equal(got, want)
    assert got.lesion_count.dtype == "Int64" and got.when.dtype == want.when.dtype
    pd.testing.assert_frame_equal(read_parquet(table, columns=["region", "suv_mean"]),
                                  pd.read_parquet(table, columns=["region", "suv_mean"]))
    monkeypatch.chdir(table.parent)  # a relative path, as a user gives -o out
    pd.testing.assert_frame_equal(read_parquet(Path(table.name)), want)
    pd.testing.assert_frame_equal(read_parquet(table.name), want)


def test_pyarrow_gets_a_path_and_no_read_ahead(table, monkeypatch):
    seen = []
    real = pq.read_table

    def spy(source, *args, **kwargs):
        seen.append((source, kwargs.get("filesystem"), kwargs.get("pre_buffer")))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    read_parquet(table)
    pd.read_parquet(table)  # pandas alone hands pyarrow a Python file object and reads ahead
    (ours, fs, pre), (theirs, _, pre_theirs) = seen
    assert isinstance(ours, str) and Path(ours) == table and type(fs).__name__ == "LocalFileSystem"
    assert pre is False
    assert not isinstance(theirs, str) and hasattr(theirs, "read") and pre_theirs is None


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.parquet"):
        read_parquet(tmp_path / "nothere.parquet")


def test_no_module_reads_parquet_through_pandas_directly():
    offenders = []
    for f in sorted((SRC / "src" / "petfeat").rglob("*.py")) + sorted((SRC / "kernels").rglob("*.py")):
        if f.name == "parquet.py" and f.parent.name == "io":
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\b(pd|pandas)\.read_parquet\(", line):
                offenders.append(f"{f.relative_to(SRC)}:{n}")
    assert not offenders, f"use petfeat.io.parquet.read_parquet: {offenders}"
