"""The report: an HTML page from a jinja2 template, publication tables, figures and QC images.

The report reads the result and feature tables; it computes nothing new beyond what is drawn.
"""

from petfeat.report.build import SECTIONS, methods_text, spec_hash, write_report
from petfeat.report.qc import coronal_mip, qc_png, render_study, reorient

__all__ = ["SECTIONS", "coronal_mip", "methods_text", "qc_png", "render_study", "reorient", "spec_hash",
           "write_report"]
