"""The pseudonymisation key and the keyed hashes that replace identifiers in every output.

One key serves scanning, extraction (single study and batch) and the linkage file, so the same
series gives the same ids on every path. Ids are ``<letter>`` + the first 12 hex digits of
HMAC-SHA256(key, message):

====  ==========================================================  ===============================
id    message                                                     what it names
====  ==========================================================  ===============================
``S`` ``study|<StudyInstanceUID>|<SeriesInstanceUID>``            a PET study (the chosen series)
``P`` ``patient|<PatientID>``                                     a patient
``P`` ``patient-of-study|<StudyInstanceUID>`` (empty PatientID)   the patient of one study
``F`` ``folder|<folder relative to the archive root>``            a folder without a PET series
``D`` ``duplicate|<folder relative to the archive root>``         a second copy of a study
====  ==========================================================  ===============================

The key file holds 32 random bytes as hex. Its default location is ``$PETFEAT_KEY_FILE`` when set,
else ``$XDG_CONFIG_HOME/petfeat/petfeat.key`` (``~/.config/petfeat/petfeat.key``): outside every
output folder, so sharing results never shares the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from petfeat.errors import PetfeatError

#: Hex digits of the HMAC kept in an id.
ID_DIGITS = 12


class KeyFileError(PetfeatError):
    """The pseudonymisation key file cannot be read, created or is too short."""


def default_key_path() -> Path:
    """Where the key lives unless a command is given ``--key-file``.

    ``$PETFEAT_KEY_FILE`` when set, else ``$XDG_CONFIG_HOME/petfeat/petfeat.key`` with
    ``XDG_CONFIG_HOME`` defaulting to ``~/.config``.
    """
    env = os.environ.get("PETFEAT_KEY_FILE")
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "petfeat" / "petfeat.key"


def _read_key(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileError(f"{path}: the key file must hold hex digits only (64 for a 32-byte key); restore the "
                           "original key file or point --key-file to it.") from exc
    if len(key) < 16:
        raise KeyFileError(f"{path}: the key must be at least 16 bytes (32 hex digits); restore the original key "
                           "file or point --key-file to it.")
    return key


def load_or_create_key(path: str | Path | None = None) -> bytes:
    """The key at ``path`` (default :func:`default_key_path`); a new random key when the file is absent.

    A new key is written to a temporary file (mode 600) in the target folder and linked to ``path``
    with ``os.link``, which fails when the name exists: two processes starting at once both end up
    with the key that was linked first, and nobody ever reads a half-written key.

    Parameters
    ----------
    path : str or Path, optional
        The key file; ``None`` for the default location.

    Returns
    -------
    bytes
        The key (at least 16 bytes).

    Raises
    ------
    KeyFileError
        The file is not hex or too short, or the folder cannot be written.
    """
    path = Path(path).expanduser() if path is not None else default_key_path()
    if path.exists():
        return _read_key(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 600
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create the key file ({exc.strerror}); give a writable --key-file "
                           "or set PETFEAT_KEY_FILE.") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_bytes(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use that key
    finally:
        os.unlink(tmp)
    return _read_key(path)


def keyed_id(prefix: str, message: str, key: bytes) -> str:
    """``prefix`` + the first :data:`ID_DIGITS` hex digits of HMAC-SHA256(key, message)."""
    if not key:
        raise KeyFileError("an empty pseudonymisation key was given; load one with load_or_create_key().")
    return prefix + hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()[:ID_DIGITS]


def study_pseudonym(study_uid: str, series_uid: str, key: bytes) -> str:
    """Id of a PET study: ``S`` + HMAC of its StudyInstanceUID and the chosen SeriesInstanceUID."""
    return keyed_id("S", f"study|{study_uid}|{series_uid}", key)


def pseudonym(patient_id: str | None, key: bytes, study_uid: str = "") -> str:
    """Id of a patient: ``P`` + HMAC of the PatientID.

    An empty PatientID (anonymised data) gives an id of the study instead
    (``patient-of-study|<StudyInstanceUID>``), so anonymous studies never merge into one patient.
    """
    pid = (patient_id or "").strip(" \x00")
    if pid:
        return keyed_id("P", f"patient|{pid}", key)
    return keyed_id("P", f"patient-of-study|{study_uid.strip()}", key)


patient_pseudonym = pseudonym


def folder_pseudonym(relative_folder: str, key: bytes) -> str:
    """Id of a folder without a usable PET series: ``F`` + HMAC of its path relative to the archive root."""
    return keyed_id("F", f"folder|{relative_folder}", key)


def duplicate_pseudonym(relative_folder: str, key: bytes) -> str:
    """Id of a second copy of a study: ``D`` + HMAC of its folder relative to the archive root."""
    return keyed_id("D", f"duplicate|{relative_folder}", key)


#: Where a path quoted in a message ends: the end, a separator, whitespace, a quote or punctuation, or a full
#: stop that ends the text or a sentence (never inside a longer name: ``Doe`` is not the start of ``Doe_John``).
PATH_END = r"(?=$|[/\\\s'\":,;)\]]|\.(?:$|\s))"


def path_forms(names: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Each way a path of ``names`` is written (as given, absolute, resolved; no trailing ``/``) -> (name, path)."""
    forms: dict[str, tuple[str, str]] = {}
    for path, name in names.items():
        for form in (str(path), str(Path(path).absolute()), os.path.realpath(path)):
            form = form.rstrip("/")
            if form not in ("", "."):
                forms.setdefault(form, (name, path))
    return forms


def path_pattern(forms: dict[str, tuple[str, str]]):
    """One regular expression for the written forms of :func:`path_forms`, the longest tried first."""
    import re

    return re.compile("(?:" + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) + ")" + PATH_END)


def replace_paths(text: str, names: dict[str, str]) -> str:
    """``text`` with each path of ``names`` (as given, absolute and resolved) replaced by its name.

    Archive folder and file names often carry patient names or record numbers: messages that go into
    outputs name files relative to a placeholder instead (``<labels 1>/spleen.nii.gz``). A path is
    replaced only where it ends (:data:`PATH_END`), never inside a longer name; longer paths first.
    """
    forms = path_forms(names)
    return path_pattern(forms).sub(lambda m: forms[m.group()][0], text) if forms else text
