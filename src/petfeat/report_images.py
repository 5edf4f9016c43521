"""Coronal MIPs for reports: kept as an import path; the drawing lives in :mod:`petfeat.report.qc`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from petfeat.report.qc import coronal_mip, qc_png, render_study

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def mip_png(suv: np.ndarray, spacing_zyx, outlines: dict[str, np.ndarray], title: str, vmax: float = 10.0,
            direction=IDENTITY) -> str:
    """Base64 PNG of the coronal MIP of ``suv`` (Z, Y, X) with each mask's outline (see :func:`qc_png`).

    ``direction`` holds the series' direction cosines (SimpleITK order); the default is an axial
    series stored feet first with identity cosines. A ``whole_body_tumor`` mask is drawn as the
    lesion contours.
    """
    geometry = SimpleNamespace(direction=direction, spacing=tuple(spacing_zyx))
    regions = {k: v for k, v in outlines.items() if k != "whole_body_tumor"}
    return qc_png(suv, geometry, regions, outlines.get("whole_body_tumor"), title, vmax=vmax)


__all__ = ["coronal_mip", "mip_png", "qc_png", "render_study"]
