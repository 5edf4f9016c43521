"""QC images: coronal maximum intensity projections oriented from the series geometry, with region outlines.

:func:`coronal_mip` reorients the volume from its direction cosines (any axis order or flip the
scanner wrote) so that the head is at the top and the patient's right on the viewer's left (the
radiological convention); :func:`qc_png` draws it with a colour bar in SUV, R/L and H/F markers,
the outline of every region and the lesion contours.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Outline colours of the regions drawn on the MIPs (lesions are red).
REGION_COLOURS = {"liver": "#e69f00", "bone": "#0072b2", "healthy_bone": "#0072b2", "salivary_glands": "#009e73",
                  "parotid": "#009e73", "aorta": "#cc79a7", "kidneys": "#56b4e9"}
LESION_COLOUR = "#d62728"


@dataclass
class CoronalMip:
    """A coronal MIP: ``image`` rows run head to foot, columns patient right to left; ``spacing`` (row, col) mm."""

    image: np.ndarray
    spacing: tuple[float, float]
    oblique: bool


def _axes_to_lps(direction) -> list[tuple[int, float]]:
    """For the numpy axes (Z, Y, X): the LPS axis each runs along most (0 L, 1 P, 2 S) and its sign."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)  # columns: X, Y, Z array axes in LPS
    out = []
    for n in range(3):  # numpy axis n is array axis 2 - n
        v = d[:, 2 - n]
        k = int(np.argmax(np.abs(v)))
        out.append((k, float(np.sign(v[k]))))
    if len({k for k, _ in out}) != 3:
        raise ValueError(f"direction cosines {d.tolist()} do not map the array axes to three patient axes")
    return out


def reorient(volume: np.ndarray, direction, spacing_zyx) -> tuple[np.ndarray, tuple[float, float, float], bool]:
    """``volume`` (Z, Y, X) as (superior->inferior, anterior->posterior, right->left) with its spacing.

    Returns the array (a view), the spacing along its axes, and whether the series is oblique (an
    axis more than about 8 degrees off the patient axes; the nearest patient axis is then used).
    """
    axes = _axes_to_lps(direction)
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    oblique = bool(np.abs(d).max(axis=0).min() < 0.99)
    want = (2, 1, 0)  # S, P, L
    order = [next(n for n, (k, _) in enumerate(axes) if k == w) for w in want]
    v = np.transpose(volume, order)
    sp = tuple(float(spacing_zyx[n]) for n in order)
    # index increasing should run S->I (i.e. towards -S), A->P (+P), R->L (+L)
    flips = [axes[order[0]][1] > 0, axes[order[1]][1] < 0, axes[order[2]][1] < 0]
    for i, f in enumerate(flips):
        if f:
            v = np.flip(v, axis=i)
    return v, sp, oblique


def coronal_mip(volume: np.ndarray, geometry) -> CoronalMip:
    """Maximum along anterior-posterior of ``volume`` (Z, Y, X) on ``geometry`` (direction, spacing)."""
    v, sp, oblique = reorient(volume, geometry.direction, geometry.spacing)
    return CoronalMip(v.max(axis=1), (sp[0], sp[2]), oblique)


def qc_png(suv: np.ndarray, geometry, regions: dict[str, np.ndarray], lesions: np.ndarray | None, title: str = "",
           vmax: float = 10.0, dpi: int = 150) -> str:
    """Base64 PNG: coronal SUV MIP (inverted grey, 0 to ``vmax``) with colour bar, orientation markers and outlines.

    Parameters
    ----------
    suv
        SUV volume (Z, Y, X) on ``geometry``.
    regions
        Boolean masks (Z, Y, X) of the regions to outline, by name.
    lesions
        Boolean lesion mask, contoured in red; ``None`` when the study has none.
    title
        Small text in the image's corner ("" for none; a pseudonymised study id, never a patient name).
    """
    from petfeat.report.figures import _plt

    plt = _plt()
    m = coronal_mip(suv, geometry)
    rows, cols = m.image.shape
    h_mm, w_mm = rows * m.spacing[0], cols * m.spacing[1]
    extent = (0, w_mm, h_mm, 0)
    img_w = 1.9  # inches; the colour bar and its labels take the rest
    img_h = min(6.0, img_w * h_mm / w_mm)
    fig = plt.figure(figsize=(img_w + 0.75, img_h + 0.1))
    ax = fig.add_axes((0.0, 0.05 / (img_h + 0.1), img_w / (img_w + 0.75), img_h / (img_h + 0.1)))
    im = ax.imshow(m.image, cmap="gray_r", vmin=0, vmax=vmax, extent=extent, interpolation="nearest")
    yy = (np.arange(rows) + 0.5) * m.spacing[0]
    xx = (np.arange(cols) + 0.5) * m.spacing[1]
    for name, mask in list(regions.items()) + ([("lesions", lesions)] if lesions is not None else []):
        if mask is None or not mask.any():
            continue
        proj, _, _ = reorient(mask, geometry.direction, geometry.spacing)
        proj = proj.any(axis=1).astype(float)
        colour = LESION_COLOUR if name == "lesions" else REGION_COLOURS.get(name, "#ff7f0e")
        ax.contour(xx, yy, proj, levels=[0.5], colors=[colour], linewidths=1.1 if name == "lesions" else 0.9)
    ax.set_xlim(0, w_mm)
    ax.set_ylim(h_mm, 0)
    ax.set_axis_off()
    style = {"fontsize": 10, "fontweight": "bold", "color": "#0b3d91", "transform": ax.transAxes}
    ax.text(0.02, 0.5, "R", ha="left", va="center", **style)
    ax.text(0.98, 0.5, "L", ha="right", va="center", **style)
    ax.text(0.5, 0.995, "H", ha="center", va="top", **style)
    ax.text(0.5, 0.005, "F", ha="center", va="bottom", **style)
    if title or m.oblique:
        ax.text(0.02, 0.995, (title + " " if title else "") + ("(oblique)" if m.oblique else ""), ha="left",
                va="top", fontsize=7, color="#555", transform=ax.transAxes)
    x0 = (img_w + 0.1) / (img_w + 0.75)
    cax = fig.add_axes((x0, 0.25, 0.12 / (img_w + 0.75), 0.5))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("SUV", fontsize=10)
    cb.ax.tick_params(labelsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


#: Regions outlined on the demo's QC images (liver and aorta included: reference organs of PSMA reads).
QC_REGIONS = ("liver", "bone", "salivary_glands", "aorta")


def render_study(pet_path: str | Path, seg: str | Path, lesions: str | Path | None, title: str = "",
                 regions: dict | None = None, names: tuple[str, ...] = QC_REGIONS, vmax: float = 10.0) -> str:
    """QC image of one study from its files: SUVbw MIP with the outlines of ``names`` and the lesion contours.

    ``seg`` is a TotalSegmentator-style folder, ``lesions`` a label map (NIfTI/NRRD/SEG) or ``None``.
    The regions are resolved with :func:`petfeat.regions.region_codes` from ``regions`` (default: the
    built-in set).
    """
    from petfeat.io.dicom import read_pet_series
    from petfeat.io.labels import read_label_map, read_totalsegmentator_folder
    from petfeat.regions import BUILTIN_REGIONS, build_codes, region_codes
    from petfeat.suv import compute_suv_factors

    regions = regions or BUILTIN_REGIONS
    series = read_pet_series(pet_path)
    suv = series.rescaled(np.float32) * compute_suv_factors(series.suv_header).suv_bw_per_slice[:, None, None]
    organs = read_totalsegmentator_folder(Path(seg), series.geometry)
    les = read_label_map(lesions, series.geometry, prefix="lesion") if lesions else None
    cm = build_codes([organs] + ([les] if les is not None else []), series.geometry.shape)
    wanted = {k: regions[k] for k in names if k in regions}
    if les is not None:
        wanted["lesions"] = {"include": ["lesion*"], "exclude": []}
    members = region_codes(wanted, cm)
    masks = {k: np.isin(cm.codes, v) for k, v in members.items()}
    lesion_mask = masks.pop("lesions", None)
    return qc_png(suv, series.geometry, masks, lesion_mask, title, vmax=vmax)
