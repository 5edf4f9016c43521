"""Labels kept on the PET grid between runs, so that a rerun with other regions skips reading them again.

Reading a whole-body TotalSegmentator folder (100+ gzipped class files on a CT grid) and
resampling it is most of a study's time; its result, the label layers on the PET grid, depends
only on the label inputs, the PET grid and the resampling options. :class:`LabelCache` stores
those layers once per label source and gives them back on the next run with other regions,
thresholds or SUV type.

Key
    A SHA-256 over: the cache format (:data:`CACHE_FORMAT`) and petfeat's version; the source's
    resolved path, and for the file or every file in the folder its name, size and modification
    time (ns), a symbolic link in the folder by its target; the PET grid (shape, spacing, origin,
    direction); the resampling mode, the name-space override and the label names given. Any change
    to one of them is a new key: the old entry is not read again and goes when the cache is over its size.
Location
    ``petfeat extract`` (one study or a batch) uses it by default: ``--label-cache DIR``, else
    ``$PETFEAT_LABEL_CACHE``, else ``$XDG_CACHE_HOME/petfeat/labels`` or ``~/.cache/petfeat/labels``;
    ``--no-label-cache`` (or ``PETFEAT_LABEL_CACHE=off``) turns it off. Batch tasks
    (:func:`petfeat.batch.run_study`) use the folder ``$PETFEAT_LABEL_CACHE`` names, which the
    command line sets for its local workers; workers of another cluster need it in their environment.
    File names are the keys' hex digests: no path or name of the archive is in them.
Size
    At most :data:`DEFAULT_MAX_BYTES` (``$PETFEAT_LABEL_CACHE_GB`` overrides, GB); after each
    write the least recently used entries are removed until the cache fits.
Format
    One file per entry: a magic line, a JSON header (layer names, name spaces, dtypes, shapes,
    native volumes, each label's notes such as its share outside the PET field of view, the warnings the read
    gave), then each layer's voxels as one zlib stream (level 1). Written atomically (temporary file +
    rename). An entry that cannot be read is removed and the labels are read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from petfeat.errors import LabelError

try:  # zlib-ng inflates 4-5x faster than the system zlib; optional (pip install zlib-ng)
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # pragma: no cover - depends on the installation
    _zlib = zlib

#: Bumped whenever the layers a reader gives for the same inputs could change; old entries are then ignored.
CACHE_FORMAT = 3
#: Default size limit of a cache folder (bytes).
DEFAULT_MAX_BYTES = 2 << 30
_MAGIC = b"PETFEAT-LABELS\n"
_SUFFIX = ".labels"


#: Values of ``$PETFEAT_LABEL_CACHE`` that turn the cache off.
OFF = ("", "off", "0", "no", "none")


def default_dir() -> Path:
    """``$PETFEAT_LABEL_CACHE`` when it names a folder, else ``$XDG_CACHE_HOME/petfeat/labels`` or ``~/.cache/...``."""
    env = os.environ.get("PETFEAT_LABEL_CACHE", "").strip()
    if env.lower() not in OFF:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "petfeat" / "labels"


def from_env() -> LabelCache | None:
    """The cache ``$PETFEAT_LABEL_CACHE`` names (how batch tasks get it); None when unset or ``off``."""
    env = os.environ.get("PETFEAT_LABEL_CACHE", "").strip()
    return None if env.lower() in OFF else LabelCache(Path(env).expanduser())


def _max_bytes() -> int:
    env = os.environ.get("PETFEAT_LABEL_CACHE_GB", "").strip()
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        gb = float(env)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise LabelError(f"PETFEAT_LABEL_CACHE_GB={env!r} is not a number of GB; set it to e.g. 4, or unset it for "
                         f"the default {DEFAULT_MAX_BYTES / 2**30:g} GB.")
    return int(gb * 2**30)


def _inputs(path: Path) -> list:
    """Name, size and mtime (ns) of the file, or of every file in the folder (sorted); a link in it by its target.

    A symbolic link in a folder is recorded whatever it points to (a loop too): the reader refuses a
    TotalSegmentator folder with links, so a link added after an entry was stored must change the key.
    """
    if path.is_dir():
        out = []
        for p in sorted(path.iterdir()):
            if p.is_symlink():
                out.append([p.name, "link", os.readlink(p)])
            elif p.is_file():
                st = p.stat()
                out.append([p.name, st.st_size, st.st_mtime_ns])
        return out
    st = path.stat()
    return [[path.name, st.st_size, st.st_mtime_ns]]


class LabelCache:
    """Label layers on the PET grid, stored per label source under a key of its inputs (module docstring).

    Parameters
    ----------
    root : path, optional
        The cache folder (created when first written); default :func:`default_dir`.
    max_bytes : int, optional
        Size limit of the folder; default ``$PETFEAT_LABEL_CACHE_GB`` or :data:`DEFAULT_MAX_BYTES`.
    """

    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_dir()
        self.max_bytes = _max_bytes() if max_bytes is None else int(max_bytes)
        self.hits = 0
        self.misses = 0

    def key(self, path: str | Path, geometry, names: dict[int, str] | None = None, mode: str = "nearest",
            namespace: str | None = None) -> str:
        """The hex SHA-256 key of one label source read onto ``geometry`` with these options."""
        from petfeat import __version__

        path = Path(path)
        if not path.exists():
            raise LabelError(f"{path}: no such file or folder.")
        record = {"format": CACHE_FORMAT, "petfeat": __version__, "path": str(path.resolve()),
                  "inputs": _inputs(path), "shape": [int(v) for v in geometry.shape],
                  "spacing": [float(v) for v in geometry.spacing], "origin": [float(v) for v in geometry.origin],
                  "direction": [float(v) for v in geometry.direction], "mode": mode, "namespace": namespace,
                  "names": sorted((int(k), str(v)) for k, v in (names or {}).items())}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def entry(self, key: str) -> Path:
        """The file of ``key``."""
        return self.root / f"{key}{_SUFFIX}"

    def read_labels(self, path: str | Path, geometry, names: dict[int, str] | None = None, mode: str = "nearest",
                    namespace: str | None = None) -> list:
        """:func:`petfeat.io.labels.read_labels` through the cache: the stored layers, else read and stored.

        The layers are equal to a fresh read (arrays, names, name space, native volumes, notes);
        their ``source`` is ``path`` as given. The warnings the read gave are given again on a hit.
        """
        from petfeat.io.labels import read_labels

        key = self.key(path, geometry, names, mode, namespace)
        file = self.entry(key)
        if file.exists():
            try:
                layers, caught = _load(file, str(path))
            except (OSError, ValueError, KeyError, TypeError, zlib.error, _zlib.error, struct.error):
                file.unlink(missing_ok=True)  # unreadable (cut short, another format): read the labels again
            else:
                self.hits += 1
                os.utime(file)  # most recently used
                for message, category in caught:
                    warnings.warn(message, category, stacklevel=2)
                return layers
        self.misses += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = read_labels(path, geometry, names=names, mode=mode, namespace=namespace)
        kept = [(str(w.message), w.category) for w in caught]
        try:
            _store(file, layers, kept)
            self.evict()
        except OSError as exc:  # a cache that cannot be written costs only the next run's time
            warnings.warn(f"label cache not written ({exc.strerror or exc}); the labels will be read again next "
                          "time. Give --label-cache a writable folder or --no-label-cache.", RuntimeWarning,
                          stacklevel=2)
        for message, category in kept:
            warnings.warn(message, category, stacklevel=2)
        return layers

    def size(self) -> int:
        """Bytes held by the cache's entries."""
        return sum(p.stat().st_size for p in self.root.glob(f"*{_SUFFIX}")) if self.root.is_dir() else 0

    def evict(self) -> list[Path]:
        """Remove the least recently used entries until the cache is within ``max_bytes``; returns those removed."""
        if not self.root.is_dir():
            return []
        entries = []
        for p in self.root.glob(f"*{_SUFFIX}"):
            try:
                st = p.stat()
            except FileNotFoundError:  # removed meanwhile by another process using the same cache
                continue
            entries.append((st.st_mtime_ns, st.st_size, p))
        entries.sort(key=lambda e: e[0])
        total, gone = sum(e[1] for e in entries), []
        for _, size, p in entries:
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
            gone.append(p)
        return gone

    def clear(self) -> None:
        """Remove every entry."""
        if self.root.is_dir():
            for p in self.root.glob(f"*{_SUFFIX}"):
                p.unlink(missing_ok=True)


def _store(file: Path, layers: list, caught: list[tuple[str, type]]) -> None:
    from petfeat.io.atomic import atomic_write

    head = {"layers": [], "warnings": [[m, c.__module__, c.__qualname__] for m, c in caught]}
    blobs = []
    for la in layers:
        arr = np.ascontiguousarray(la.array)
        blob = _zlib.compress(arr, 1)
        blobs.append(blob)
        head["layers"].append({"names": [[int(k), v] for k, v in la.names.items()], "namespace": la.namespace,
                               "dtype": arr.dtype.str, "shape": list(arr.shape), "bytes": len(blob),
                               "native_volume_ml": la.native_volume_ml,
                               "notes": getattr(la, "notes", None)})
    text = json.dumps(head).encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(text)) + text)
            for blob in blobs:
                f.write(blob)

    atomic_write(file, write)


def _category(module: str, name: str) -> type:
    import importlib

    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        obj = UserWarning
    return obj if isinstance(obj, type) and issubclass(obj, Warning) else UserWarning


def _load(file: Path, source: str) -> tuple[list, list[tuple[str, type]]]:
    from petfeat.regions import LabelLayer

    with open(file, "rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            raise ValueError("not a label cache entry")
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
        layers = []
        for meta in head["layers"]:
            data = f.read(meta["bytes"])
            arr = np.frombuffer(bytearray(_zlib.decompress(data)), np.dtype(meta["dtype"])).reshape(meta["shape"])
            la = LabelLayer(arr, {int(k): v for k, v in meta["names"]}, source, namespace=meta["namespace"])
            la.native_volume_ml = meta["native_volume_ml"]
            if meta.get("notes") is not None:
                la.notes = meta["notes"]
            layers.append(la)
    return layers, [(m, _category(mod, name)) for m, mod, name in head["warnings"]]
