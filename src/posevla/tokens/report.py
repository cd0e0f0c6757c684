"""Quantisation report: how much error the bin spec adds on a set of labels, and how many bins are used.

Used by ``posevla tokens report``.  Errors are ``|decode(encode(x)) - x|``: translation and size in
millimetres, rotation in degrees (angular difference, wrap-aware), 2D anchors in normalised units and in
pixels of a 224-pixel image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.tokens.bins import BinSpec

__all__ = ["quantization_report", "format_report", "REPORT_IMAGE_SIZE"]

#: Image size used to express anchor errors in pixels.
REPORT_IMAGE_SIZE = 224


def _values(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{int((~np.isfinite(arr)).sum())} non-finite value(s)", field=name,
                        fix="drop annotations with NaN/inf poses before the report")
    return arr


def _family_stats(bins: BinSpec, family: str, x: np.ndarray, scale: float, unit: str) -> dict[str, Any]:
    total = bins.num_bins(family)
    if x.size == 0:
        return {"unit": unit, "n_values": 0, "mean_abs_err": None, "max_abs_err": None,
                "bins_used": 0, "bins_total": total}
    ids = bins.encode(family, x)
    diff = bins.decode(family, ids) - x
    if family == "rot":
        diff = np.mod(diff + math.pi, 2.0 * math.pi) - math.pi
    err = np.abs(diff) * scale
    return {
        "unit": unit,
        "n_values": int(x.size),
        "mean_abs_err": float(err.mean()),
        "max_abs_err": float(err.max()),
        "bins_used": int(np.unique(ids).size),
        "bins_total": int(total),
    }


def quantization_report(
    bins: BinSpec,
    *,
    trans_xy: Any,
    trans_z: Any,
    size: Any,
    rot: Any,
    loc: Any | None = None,
) -> dict[str, Any]:
    """Per-family quantisation error and bin usage.

    Args:
        bins: the bin spec to evaluate.
        trans_xy: translation x and y values in metres (any shape; pooled).
        trans_z: translation z values in metres.
        size: box dimensions in metres (W, H, L pooled).
        rot: Euler angles in radians.
        loc: normalised [0, 1] anchor coordinates, optional.

    Returns:
        ``{"fingerprint": str, "description": str, "families": {family: {"unit", "n_values", "mean_abs_err",
        "max_abs_err", "bins_used", "bins_total"}}}``; the ``loc`` entry (when given) also has
        ``mean_abs_err_px``/``max_abs_err_px`` at 224 px.  Errors are None for a family with no values.
    """
    fams: dict[str, dict[str, Any]] = {
        "trans_xy": _family_stats(bins, "trans_xy", _values(trans_xy, "trans_xy"), 1000.0, "mm"),
        "trans_z": _family_stats(bins, "trans_z", _values(trans_z, "trans_z"), 1000.0, "mm"),
        "size": _family_stats(bins, "size", _values(size, "size"), 1000.0, "mm"),
        "rot": _family_stats(bins, "rot", _values(rot, "rot"), 180.0 / math.pi, "deg"),
    }
    if loc is not None:
        st = _family_stats(bins, "loc", _values(loc, "loc"), 1.0, "norm")
        for k in ("mean_abs_err", "max_abs_err"):
            st[f"{k}_px"] = None if st[k] is None else st[k] * REPORT_IMAGE_SIZE
        fams = {"loc": st, **fams}
    return {"fingerprint": bins.fingerprint(), "description": bins.description, "families": fams}


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`quantization_report` dict."""

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"

    header = ("family", "unit", "n", "mean |err|", "max |err|", "bins used")
    rows = [header]
    for fam, st in report["families"].items():
        rows.append((fam, st["unit"], str(st["n_values"]), num(st["mean_abs_err"]), num(st["max_abs_err"]),
                     f"{st['bins_used']}/{st['bins_total']}"))
        if "mean_abs_err_px" in st:
            rows.append(("", f"px@{REPORT_IMAGE_SIZE}", "", num(st["mean_abs_err_px"]), num(st["max_abs_err_px"]),
                         ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"bin spec {report.get('fingerprint', '?')}" + (
        f" ({report['description']})" if report.get("description") else "")]
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
