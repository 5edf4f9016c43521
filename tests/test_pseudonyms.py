"""The pseudonymisation key (location, creation, races) and the keyed ids."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from petfeat.pseudonyms import (
    KeyFileError,
    default_key_path,
    folder_pseudonym,
    load_or_create_key,
    pseudonym,
    study_pseudonym,
)

KEY = bytes(range(32))


def test_default_key_location(monkeypatch, tmp_path):
    monkeypatch.setenv("PETFEAT_KEY_FILE", str(tmp_path / "k.key"))
    assert default_key_path() == tmp_path / "k.key"
    monkeypatch.delenv("PETFEAT_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_key_path() == tmp_path / "cfg" / "petfeat" / "petfeat.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_path() == tmp_path / "home" / ".config" / "petfeat" / "petfeat.key"


def test_a_new_key_is_private_and_read_back(monkeypatch, tmp_path):
    monkeypatch.setenv("PETFEAT_KEY_FILE", str(tmp_path / "sub" / "petfeat.key"))
    key = load_or_create_key()
    assert len(key) == 32 and load_or_create_key() == key == load_or_create_key(tmp_path / "sub" / "petfeat.key")
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "petfeat.key").st_mode) == 0o600
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["petfeat.key"]  # no temporary file left


def test_processes_starting_at_once_end_with_one_key(tmp_path):
    path = tmp_path / "petfeat.key"
    n = 16
    barrier, keys = threading.Barrier(n), []

    def start():
        barrier.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == n and len(set(keys)) == 1 and bytes.fromhex(path.read_text()) == keys[0]


def test_the_first_key_linked_wins(monkeypatch, tmp_path):
    # another process links its key between our check and our link: ours is dropped, theirs is used
    path = tmp_path / "petfeat.key"
    theirs = bytes(range(100, 132))
    real_link = os.link

    def link(src, dst):
        Path(dst).write_text(theirs.hex())
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    assert load_or_create_key(path) == theirs
    assert [p.name for p in tmp_path.iterdir()] == ["petfeat.key"]


@pytest.mark.parametrize("text, message", [("abcd", "at least 16 bytes"), ("zz" * 32, "hex digits only")])
def test_bad_key_files_are_refused_with_the_fix(tmp_path, text, message):
    (tmp_path / "k").write_text(text)
    with pytest.raises(KeyFileError, match=message):
        load_or_create_key(tmp_path / "k")


def test_ids_depend_on_the_key_and_the_uids_only():
    other = bytes(range(1, 33))
    assert study_pseudonym("1.2", "1.3", KEY) != study_pseudonym("1.2", "1.4", KEY) != study_pseudonym("1.2", "1.3",
                                                                                                        other)
    assert pseudonym("MRN1", KEY) == pseudonym(" MRN1 ", KEY, "1.2") != pseudonym("MRN1", other)
    # empty PatientID: one id per study, never one shared "empty" patient
    assert pseudonym("", KEY, "1.2") != pseudonym("  ", KEY, "1.3") and pseudonym("", KEY, "1.2").startswith("P")
    assert folder_pseudonym("a/b", KEY).startswith("F") and "a/b" not in folder_pseudonym("a/b", KEY)


def test_extract_uses_the_same_patient_pseudonym():
    from petfeat.extract import pseudonym as extract_pseudonym

    assert extract_pseudonym("MRN1", KEY, "1.2") == pseudonym("MRN1", KEY)
    assert extract_pseudonym("", KEY, "1.2") == pseudonym("", KEY, "1.2")


def test_the_api_without_a_key_uses_the_command_lines_key_file(monkeypatch, tmp_path, synth_archive):
    """extract_features without id_key: the patient_id of `petfeat extract` (the key file), in every process."""
    import numpy as np
    import pandas as pd

    import petfeat.extract
    from petfeat import extract_features, read_pet_series
    from petfeat.cli import main

    key_file = tmp_path / "k" / "petfeat.key"
    monkeypatch.setenv("PETFEAT_KEY_FILE", str(key_file))
    monkeypatch.setattr(petfeat.extract, "_FILE_KEYS", {})
    src, truths = synth_archive
    study = src / truths[0]["patient"]
    series = read_pet_series(study / "pet")
    api = extract_features(series, np.ones(series.geometry.shape, np.uint8), {"all": {"include": ["label_1"]}},
                           backend="cpu", peaks=False)
    assert key_file.exists()  # made by the API call, as the command line makes it
    assert main(["extract", "--pet", str(study / "pet"), "--labels", str(study / "seg"), "--lesions",
                 str(study / "lesions.nii.gz"), "--no-peak", "--backend", "cpu",
                 "-o", str(tmp_path / "out")]) == 0
    cli = pd.read_parquet(tmp_path / "out" / "features.parquet")
    want = pseudonym(series.patient_id, load_or_create_key(key_file))
    assert api.patient_id.iloc[0] == cli.patient_id.iloc[0] == want


def test_the_api_without_a_readable_key_file_warns_and_uses_a_process_key(monkeypatch, tmp_path):
    import petfeat.extract
    from petfeat.errors import PetfeatWarning
    from petfeat.extract import pseudonym as extract_pseudonym

    bad = tmp_path / "petfeat.key"
    bad.write_text("not hex\n")
    monkeypatch.setenv("PETFEAT_KEY_FILE", str(bad))
    monkeypatch.setattr(petfeat.extract, "_FILE_KEYS", {})
    with pytest.warns(PetfeatWarning, match="key of this process only"):
        pid = extract_pseudonym("MRN1", None, "1.2")
    assert pid == pseudonym("MRN1", petfeat.extract._PROCESS_KEY)
