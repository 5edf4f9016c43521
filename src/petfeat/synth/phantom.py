"""A whole-body PSMA-like phantom built from analytic shapes in patient (LPS) millimetres.

Every structure is an ellipsoid (or a union of them) defined in physical space, so the same
anatomy can be rasterised onto any grid: the PET grid for the image and the lesion mask, a
CT-like grid for the TotalSegmentator-style label files. Names follow TotalSegmentator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Uptake (SUVbw) of each structure in a PSMA PET, roughly as seen in 68Ga-PSMA-11 scans.
UPTAKE = {
    "body": 0.6, "bone": 1.4, "liver": 6.0, "spleen": 5.0, "kidney": 22.0, "urinary_bladder": 28.0,
    "parotid_gland": 14.0, "submandibular_gland": 12.0, "aorta": 1.7, "prostate": 2.5,
}
#: Organs whose per-patient uptake scale comes from a child of the patient's generator (:func:`make_anatomy`).
CHILD_STREAM_ORGANS = ("aorta", "prostate")
#: Organs painted with their own uptake over body and bone (lesions are painted last).
PAINTED_ORGANS = ("liver", "spleen", "kidney", "urinary_bladder", "parotid_gland", "submandibular_gland", "aorta",
                  "prostate")
BONE_CLASSES = ("vertebrae", "rib", "sacrum", "hip", "femur", "humerus", "scapula", "clavicula", "sternum", "skull")


@dataclass
class Ellipsoid:
    """Axis-aligned ellipsoid: centre and radii in mm (LPS x, y, z)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]

    def inside(self, x, y, z) -> np.ndarray:
        """Boolean mask of points inside (``x, y, z`` broadcastable coordinate arrays)."""
        out = np.zeros(np.broadcast(x, y, z).shape, bool)
        self.paint(out, x, y, z)
        return out

    def paint(self, out: np.ndarray, x, y, z) -> None:
        """Set ``out`` where inside.

        When ``x, y, z`` are axis vectors (as :func:`grid_coordinates` makes them), only the box where
        every axis term is <= 1 is computed (outside it the sum exceeds 1); otherwise the whole grid.
        """
        terms = [((v - c) / r) ** 2 for v, c, r in zip((x, y, z), self.centre, self.radii, strict=True)]
        box = [slice(None)] * out.ndim
        for t in terms:
            long = [k for k, n in enumerate(t.shape) if n > 1]
            if len(long) != 1 or t.ndim != out.ndim:
                box = [slice(None)] * out.ndim  # not axis vectors: the whole grid
                break
            hit = np.flatnonzero(t.reshape(-1) <= 1.0)
            if not len(hit):
                return
            box[long[0]] = slice(int(hit[0]), int(hit[-1]) + 1)
        sub = [t[tuple(box[k] if t.shape[k] > 1 else slice(None) for k in range(t.ndim))] for t in terms]
        out[tuple(box)] |= sub[0] + sub[1] + sub[2] <= 1.0


@dataclass
class Lesion:
    """A spherical lesion with its planted SUV."""

    lesion_id: int
    site: str
    centre: tuple[float, float, float]
    radius_mm: float
    suv: float


@dataclass
class Anatomy:
    """Named structures (each a list of ellipsoids) plus lesions, in body coordinates (mm)."""

    height_mm: float
    structures: dict[str, list[Ellipsoid]] = field(default_factory=dict)
    lesions: list[Lesion] = field(default_factory=list)
    #: Per-patient multiplier of each organ's uptake (patients differ, as in real cohorts).
    uptake_scale: dict[str, float] = field(default_factory=dict)

    def mask(self, name: str, x, y, z) -> np.ndarray:
        """Voxel mask of one structure on the grid of coordinate arrays ``x, y, z``."""
        out = np.zeros(np.broadcast(x, y, z).shape, bool)
        for e in self.structures[name]:
            e.paint(out, x, y, z)
        return out


def make_anatomy(rng: np.random.Generator, height_mm: float = 900.0, n_lesions: int | None = None) -> Anatomy:
    """Random whole-body anatomy (head to upper thighs) with bone and soft-tissue lesions."""
    h = height_mm
    j = lambda s: float(rng.normal(0.0, s))  # noqa: E731 - small jitter helper
    a = Anatomy(height_mm=h)
    s = a.structures
    s["body"] = [Ellipsoid((0, 0, 0.50 * h), (165 + j(8), 105 + j(5), 0.30 * h)),
                 Ellipsoid((0, 0, 0.90 * h), (80, 95, 100)), Ellipsoid((0, 10, 0.80 * h), (60, 60, 60)),
                 Ellipsoid((-85, 0, 0.12 * h), (75, 75, 0.14 * h)), Ellipsoid((85, 0, 0.12 * h), (75, 75, 0.14 * h))]
    s["skull"] = [Ellipsoid((0, 0, 0.92 * h), (72, 85, 80))]
    levels = ([f"L{i}" for i in range(5, 0, -1)] + [f"T{i}" for i in range(12, 0, -1)]
              + [f"C{i}" for i in range(7, 0, -1)])
    z0, z1 = 0.36 * h, 0.80 * h
    for k, lev in enumerate(levels):
        zc = z0 + (z1 - z0) * k / (len(levels) - 1)
        r = 20.0 - 8.0 * k / len(levels)
        s[f"vertebrae_{lev}"] = [Ellipsoid((0, 55, zc), (r, r * 0.9, 0.42 * (z1 - z0) / len(levels)))]
    for side, sx in (("left", 1.0), ("right", -1.0)):
        for i in range(1, 13, 3):
            zc = 0.72 * h - (i - 1) * 0.018 * h
            s[f"rib_{side}_{i}"] = [Ellipsoid((sx * 120, 10, zc), (14, 80, 7))]
        s[f"hip_{side}"] = [Ellipsoid((sx * 85, 20, 0.30 * h), (45, 30, 40))]
        s[f"femur_{side}"] = [Ellipsoid((sx * 90, 10, 0.12 * h), (16, 16, 0.12 * h))]
        s[f"humerus_{side}"] = [Ellipsoid((sx * 185, 15, 0.64 * h), (16, 16, 0.10 * h))]
        s[f"scapula_{side}"] = [Ellipsoid((sx * 95, 80, 0.70 * h), (45, 10, 50))]
        s[f"clavicula_{side}"] = [Ellipsoid((sx * 70, -40, 0.78 * h), (55, 8, 8))]
        s[f"kidney_{side}"] = [Ellipsoid((sx * 65 + j(3), 45, 0.47 * h), (28, 25, 50))]
        g = float(rng.uniform(0.8, 1.2))  # gland size varies between patients
        s[f"parotid_gland_{side}"] = [Ellipsoid((sx * 55, 25, 0.86 * h), (14 * g, 18 * g, 22 * g))]
        s[f"submandibular_gland_{side}"] = [Ellipsoid((sx * 35, -25, 0.82 * h), (11 * g, 11 * g, 10 * g))]
    s["costal_cartilages"] = [Ellipsoid((0, -85, 0.62 * h), (40, 8, 20))]
    s["sacrum"] = [Ellipsoid((0, 60, 0.32 * h), (35, 20, 35))]
    s["sternum"] = [Ellipsoid((0, -95, 0.67 * h), (15, 8, 55))]
    s["liver"] = [Ellipsoid((-70 + j(4), -5, 0.57 * h), (85, 70, 60))]
    s["spleen"] = [Ellipsoid((95, 30, 0.56 * h), (30, 30, 40))]
    s["urinary_bladder"] = [Ellipsoid((0, -25, 0.27 * h), (35, 30, 28))]
    s["prostate"] = [Ellipsoid((0, -12, 0.225 * h), (18, 13, 12))]
    # Descending and abdominal aorta: a chain of overlapping ellipsoids left of the midline, in front of the
    # vertebral bodies (their front edge is near y = 35 mm), from the thoracic spine down to the lumbar spine;
    # 9 mm radius (an aortic lumen of about 18 mm) keeps it clear of the liver and kidneys.
    s["aorta"] = [Ellipsoid((25, 24, zc), (9, 9, 24)) for zc in np.linspace(0.47 * h, 0.72 * h, 11)]

    a.uptake_scale = {organ: float(rng.lognormal(0.0, 0.2)) for organ in UPTAKE if organ not in CHILD_STREAM_ORGANS}
    # A child generator draws the scales of these organs: the parent's stream (lesions here, noise and
    # acquisition in synth.archive) is the same as without them.
    child = rng.spawn(1)[0]
    a.uptake_scale.update({organ: float(child.lognormal(0.0, 0.2)) for organ in CHILD_STREAM_ORGANS})
    # lesions: mostly bone (the skeleton of mCRPC), some lymph nodes
    n = int(rng.integers(3, 9)) if n_lesions is None else n_lesions
    bone_sites = [k for k in s if k.startswith(("vertebrae_L", "vertebrae_T", "hip_", "rib_", "sacrum", "femur_"))]
    for i in range(n):
        if i % 4 == 3:  # soft-tissue lymph node, para-aortic or pelvic
            site = "lymph_node"
            centre = (float(rng.uniform(-60, 60)), float(rng.uniform(-10, 20)), float(rng.uniform(0.30, 0.45) * h))
            radius = float(rng.uniform(7, 12))
        else:
            site = str(rng.choice(bone_sites))
            e = s[site][0]
            centre = tuple(float(c) for c in e.centre)
            radius = float(min(min(e.radii) * 0.9, rng.uniform(8, 14)))
            radius = max(radius, 6.5)
        a.lesions.append(Lesion(i + 1, site, centre, radius, float(rng.uniform(8, 40))))
    return a


def grid_coordinates(shape_zyx, spacing_zyx, origin_xyz):
    """Broadcastable LPS coordinate arrays ``x, y, z`` (mm) of an axis-aligned grid's voxel centres."""
    nz, ny, nx = shape_zyx
    sz, sy, sx = spacing_zyx
    x = origin_xyz[0] + sx * np.arange(nx)[None, None, :]
    y = origin_xyz[1] + sy * np.arange(ny)[None, :, None]
    z = origin_xyz[2] + sz * np.arange(nz)[:, None, None]
    return x, y, z


def rasterise(anatomy: Anatomy, shape_zyx, spacing_zyx, origin_xyz) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Masks of every structure and the lesion id map on a grid."""
    x, y, z = grid_coordinates(shape_zyx, spacing_zyx, origin_xyz)
    masks = {name: anatomy.mask(name, x, y, z) for name in anatomy.structures}
    lesion_map = np.zeros(shape_zyx, np.uint16)
    for les in anatomy.lesions:
        inside = Ellipsoid(les.centre, (les.radius_mm,) * 3).inside(x, y, z) & masks["body"]
        lesion_map[inside] = les.lesion_id
    return masks, lesion_map


def uptake_volume(anatomy: Anatomy, masks: dict[str, np.ndarray], lesion_map: np.ndarray) -> np.ndarray:
    """Noise-free SUV volume: organ uptake painted in order, lesions last."""
    def up(organ):
        return UPTAKE[organ] * anatomy.uptake_scale.get(organ, 1.0)

    suv = np.zeros(lesion_map.shape)
    suv[masks["body"]] = up("body")
    for name, m in masks.items():
        if name.startswith(BONE_CLASSES):
            suv[m & masks["body"]] = up("bone")
    for name, m in masks.items():
        for organ in PAINTED_ORGANS:
            if name.startswith(organ):
                suv[m] = up(organ)
    for les in anatomy.lesions:
        suv[lesion_map == les.lesion_id] = les.suv
    return suv
