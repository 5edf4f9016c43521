"""Coronal maximum intensity projections with region outlines, for the demo report."""

from __future__ import annotations

import base64
import io

import numpy as np


def mip_png(suv: np.ndarray, spacing_zyx, outlines: dict[str, np.ndarray], title: str, vmax: float = 10.0) -> str:
    """Base64 PNG of the coronal MIP of ``suv`` (Z, Y, X) with each mask's projection outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mip = suv.max(axis=1)[::-1]  # project along anterior-posterior; head up
    aspect = spacing_zyx[0] / spacing_zyx[2]
    fig, ax = plt.subplots(figsize=(3.2, 3.2 * mip.shape[0] * aspect / mip.shape[1]))
    ax.imshow(mip, cmap="gray_r", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
    colours = {"whole_body_tumor": "#d62728", "bone": "#1f77b4", "salivary_glands": "#2ca02c"}
    for name, mask in outlines.items():
        proj = mask.any(axis=1)[::-1].astype(float)
        if proj.any():
            ax.contour(proj, levels=[0.5], colors=[colours.get(name, "#ff7f0e")], linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    handles = [plt.Line2D([0], [0], color=c, lw=1.5, label=n) for n, c in colours.items() if n in outlines]
    ax.legend(handles=handles, loc="lower center", fontsize=6, frameon=False, bbox_to_anchor=(0.5, -0.08), ncol=3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
