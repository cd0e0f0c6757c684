"""Bin specification for the pose-token families (spec §1.3, contracts "Artefacts: bin spec").

Five families turn continuous pose values into discrete token ids:

``loc``
    2D anchor coordinates, ``n_loc`` (1024) uniform bins over normalised ``[0, 1]``:
    ``id = clip(floor(x * n), 0, n - 1)``, decode ``(id + 0.5) / n``.
``trans_xy`` / ``trans_z`` / ``size``
    Non-uniform bins in metres (camera frame): ``N + 1`` edges are quantiles of fitting data
    (x and y pooled for ``trans_xy``).  Values outside the edge range clip into the end bins; decode is the
    bin mid-point.
``rot``
    Euler angles (radians), ``n_rot`` (360) uniform values over ``[-pi, pi]``: the input is wrapped to
    ``[-pi, pi)``, ``id = round((theta + pi) / (2 pi) * (N - 1))``, decode ``id / (N - 1) * 2 pi - pi``.

How many tokens each family has is one value, :class:`BinCounts` (the paper's 1024 / 2048 / 2048 / 2048 / 360
by default, :meth:`BinCounts.tiny` for from-scratch CPU models); it travels whole from the training config
to :meth:`BinSpec.fit` and :meth:`BinCounts.uniform`.

A :class:`BinSpec` is immutable, saved as JSON (``bins.json``) with every tokenised dataset and checkpoint, and
has a :meth:`BinSpec.fingerprint` so a checkpoint can detect that its data used different bins.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posevla.errors import ConfigError, DataError

__all__ = ["BinCounts", "BinSpec", "FAMILIES", "EDGE_FAMILIES", "BINSPEC_VERSION"]

#: All token families, in vocabulary order.
FAMILIES: tuple[str, ...] = ("loc", "trans_xy", "trans_z", "size", "rot")
#: Families with fitted (non-uniform) edges.
EDGE_FAMILIES: tuple[str, ...] = ("trans_xy", "trans_z", "size")
#: How bins.json lays out each family that is not fitted: (kind, low, high); fitted families are "edges".
_FAMILY_LAYOUT: dict[str, tuple[str, float, float]] = {
    "loc": ("uniform_floor", 0.0, 1.0),
    "rot": ("uniform_round", -math.pi, math.pi),
}
#: Version of the JSON layout written by :meth:`BinSpec.save`.
BINSPEC_VERSION = 1

_FIX_REGENERATE = "re-create the bin spec with BinSpec.fit(...).save(path) (or restore the original bins.json)"


def _check_edges(edges: np.ndarray, family: str) -> None:
    if edges.ndim != 1 or edges.shape[0] < 2:
        raise DataError(f"{family} edges must be a 1-D array with at least 2 values, got shape {edges.shape}",
                        field=family)
    if not np.all(np.isfinite(edges)):
        raise DataError(f"{family} edges contain non-finite values", field=family)
    if not np.all(np.diff(edges) > 0):
        i = int(np.argmax(np.diff(edges) <= 0))
        raise DataError(f"{family} edges must be strictly increasing; edge {i + 1} ({edges[i + 1]!r}) <= "
                        f"edge {i} ({edges[i]!r})", field=family)


def _strictly_increasing_quantiles(values: np.ndarray, n: int) -> np.ndarray:
    """``n + 1`` strictly increasing edges from the quantiles of ``values``.

    Repeated values make several quantiles equal; such a run of tied edges is spread linearly between the tied
    value and the next distinct quantile (the largest distinct value is anchored at the last edge, so ties at
    the top are spread below the maximum).  Every fitting value still lies inside ``[edges[0], edges[-1]]``.
    Degenerate data (a single distinct value ``v``) gives uniform edges over ``v +- max(1e-3 |v|, 1e-3)``.
    """
    q = np.quantile(values, np.linspace(0.0, 1.0, n + 1))
    uniq, first = np.unique(q, return_index=True)
    if uniq.shape[0] == 1:
        v = float(uniq[0])
        half = max(1e-3 * abs(v), 1e-3)
        edges = np.linspace(v - half, v + half, n + 1)
    else:
        pos = first.astype(np.float64)
        pos[-1] = n  # anchor the maximum at the last edge
        edges = np.interp(np.arange(n + 1, dtype=np.float64), pos, uniq)
    # Safeguard against float rounding producing equal neighbours.
    for i in range(1, edges.shape[0]):
        if edges[i] <= edges[i - 1]:
            edges[i] = np.nextafter(edges[i - 1], np.inf)
    return edges


def _as_fit_values(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise DataError(f"no values to fit the {name} bins", field=name,
                        fix="pass at least one value (the training annotations) for every family")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{int((~np.isfinite(arr)).sum())} non-finite {name} value(s) in the fitting data",
                        field=name, fix="drop annotations with NaN/inf poses before fitting the bins")
    return arr


@dataclass(frozen=True)
class BinCounts:
    """Token counts of the five pose families (the pose-token vocabulary size). One value, one default.

    Attributes:
        loc: 2D anchor bins over normalised [0, 1] (paper: 1024).
        trans_xy, trans_z, size: fitted quantile bins of camera-frame x/y, depth and box sizes (paper: 2048).
        rot: uniform Euler-angle values over [-pi, pi] (paper: 360).
    """

    loc: int = 1024
    trans_xy: int = 2048
    trans_z: int = 2048
    size: int = 2048
    rot: int = 360

    def __post_init__(self) -> None:
        for fam in FAMILIES:
            n = getattr(self, fam)
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
                raise ConfigError(f"--bins.{fam.replace('_', '-')} (the token count of the pose family '{fam}') "
                                  f"must be an integer >= 2, got {n!r}")
            object.__setattr__(self, fam, int(n))

    @classmethod
    def tiny(cls) -> BinCounts:
        """Coarser families for a from-scratch model on a CPU budget (each bin is seen far more often; the
        quantisation error stays well under the IoU tolerances, see ``posevla tokens report``)."""
        return cls(loc=128, trans_xy=64, trans_z=64, size=64, rot=72)

    def uniform(self, description: str = "uniform") -> BinSpec:
        """Uniform bins over a table-top workspace (x, y in [-2, 2] m, depth [0, 4] m, sizes [0, 2] m).

        For a model without pose pre-training (post-training from scratch): the bins only fix the vocabulary
        (the same token counts as a pose-pretrained model of the same config) and what a plan decodes to.
        """
        return BinSpec(
            np.linspace(-2.0, 2.0, self.trans_xy + 1),
            np.linspace(0.0, 4.0, self.trans_z + 1),
            np.linspace(0.0, 2.0, self.size + 1),
            n_rot=self.rot,
            n_loc=self.loc,
            description=description,
        )


@dataclass(frozen=True, eq=False)
class BinSpec:
    """Immutable quantisation tables for all pose-token families.

    Args:
        trans_xy_edges: ``(N+1,)`` strictly increasing edges (metres) for translation x and y.
        trans_z_edges: ``(N+1,)`` edges (metres) for translation z (depth).
        size_edges: ``(N+1,)`` edges (metres) for box dimensions W, H, L (Omni3D order).
        n_rot: number of rotation values (uniform over [-pi, pi]); at least 2.
        n_loc: number of 2D anchor bins over normalised [0, 1]; at least 1.
        description: free text describing the fitting data (not part of the fingerprint).
    """

    trans_xy_edges: np.ndarray
    trans_z_edges: np.ndarray
    size_edges: np.ndarray
    n_rot: int = 360
    n_loc: int = 1024
    description: str = ""
    _fingerprint: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        for fam in EDGE_FAMILIES:
            arr = np.array(getattr(self, f"{fam}_edges"), dtype=np.float64, copy=True)
            _check_edges(arr, fam)
            arr.setflags(write=False)
            object.__setattr__(self, f"{fam}_edges", arr)
        if int(self.n_rot) != self.n_rot or self.n_rot < 2:
            raise DataError(f"n_rot must be an integer >= 2, got {self.n_rot!r}", field="rot")
        if int(self.n_loc) != self.n_loc or self.n_loc < 1:
            raise DataError(f"n_loc must be an integer >= 1, got {self.n_loc!r}", field="loc")
        object.__setattr__(self, "n_rot", int(self.n_rot))
        object.__setattr__(self, "n_loc", int(self.n_loc))
        object.__setattr__(self, "description", str(self.description))
        object.__setattr__(self, "_fingerprint", self._compute_fingerprint())

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(
        cls, trans_xy: Any, trans_z: Any, size: Any, counts: BinCounts | None = None, *, description: str = ""
    ) -> BinSpec:
        """Fit non-uniform edges as quantiles of the given values (any shape; flattened).

        ``trans_xy`` holds x and y values pooled (e.g. an ``(M, 2)`` array of x, y); ``trans_z`` the depths;
        ``size`` all of W, H, L pooled.  Units are metres. ``counts`` default: :class:`BinCounts` ().
        """
        counts = counts if counts is not None else BinCounts()
        if not isinstance(counts, BinCounts):
            raise ConfigError(f"counts must be a BinCounts, got {type(counts).__name__}")
        edges = {}
        for fam, vals in (("trans_xy", trans_xy), ("trans_z", trans_z), ("size", size)):
            edges[fam] = _strictly_increasing_quantiles(_as_fit_values(vals, fam), getattr(counts, fam))
        return cls(edges["trans_xy"], edges["trans_z"], edges["size"], n_rot=counts.rot, n_loc=counts.loc,
                   description=description)

    # ------------------------------------------------------------------ queries
    def _family(self, family: str) -> str:
        if family not in FAMILIES:
            raise ConfigError(f"unknown token family {family!r}; valid: {', '.join(FAMILIES)}")
        return family

    def edges(self, family: str) -> np.ndarray:
        """The ``(N+1,)`` edges of a non-uniform family (read-only array)."""
        if self._family(family) not in EDGE_FAMILIES:
            raise ConfigError(f"family {family!r} is uniform and has no fitted edges; "
                              f"edge families: {', '.join(EDGE_FAMILIES)}")
        return getattr(self, f"{family}_edges")

    @property
    def counts(self) -> BinCounts:
        """The token count of every family."""
        return BinCounts(**{f: self.num_bins(f) for f in FAMILIES})

    def num_bins(self, family: str) -> int:
        """Number of token ids in ``family``."""
        fam = self._family(family)
        if fam == "loc":
            return self.n_loc
        if fam == "rot":
            return self.n_rot
        return int(self.edges(fam).shape[0] - 1)

    def encode(self, family: str, values: Any) -> np.ndarray:
        """Quantise ``values`` (any shape) to ``np.int64`` token ids of ``family``.

        Values outside a family's range clip into the end bins (rotation wraps instead).
        Raises DataError on non-finite values.
        """
        fam = self._family(family)
        x = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise DataError(f"cannot encode non-finite {fam} value(s)", field=fam,
                            fix="drop or repair annotations with NaN/inf poses")
        n = self.num_bins(fam)
        if fam == "loc":
            ids = np.clip(np.floor(x * n), 0, n - 1)
        elif fam == "rot":
            wrapped = np.mod(x + math.pi, 2.0 * math.pi) - math.pi
            ids = np.clip(np.floor((wrapped + math.pi) / (2.0 * math.pi) * (n - 1) + 0.5), 0, n - 1)
        else:
            ids = np.searchsorted(self.edges(fam)[1:-1], x, side="right")
        return np.asarray(ids, dtype=np.int64)

    def _check_ids(self, fam: str, ids: Any) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise DataError(f"{fam} token ids must be integers", field=fam)
        arr = arr.astype(np.int64)
        n = self.num_bins(fam)
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise DataError(f"{fam} token id out of range [0, {n - 1}]: min {arr.min()}, max {arr.max()}",
                            field=fam)
        return arr

    def decode(self, family: str, ids: Any) -> np.ndarray:
        """Token ids back to values (bin centre; rotation grid value), ``float64`` of the same shape."""
        fam = self._family(family)
        i = self._check_ids(fam, ids)
        n = self.num_bins(fam)
        if fam == "loc":
            out = (i + 0.5) / n
        elif fam == "rot":
            out = i / (n - 1) * 2.0 * math.pi - math.pi
        else:
            e = self.edges(fam)
            out = 0.5 * (e[i] + e[i + 1])
        return np.asarray(out, dtype=np.float64)

    def bin_width(self, family: str, ids: Any) -> np.ndarray:
        """Width of the bins ``ids`` (for rotation: the grid step ``2 pi / (N - 1)``)."""
        fam = self._family(family)
        i = self._check_ids(fam, ids)
        if fam == "loc":
            return np.full(i.shape, 1.0 / self.n_loc)
        if fam == "rot":
            return np.full(i.shape, 2.0 * math.pi / (self.n_rot - 1))
        e = self.edges(fam)
        return np.asarray(e[i + 1] - e[i], dtype=np.float64)

    def half_bin_width(self, family: str, ids: Any) -> np.ndarray:
        """Half of :meth:`bin_width`: the worst-case quantisation error for in-range values."""
        return 0.5 * self.bin_width(family, ids)

    # design.md names
    encode_family = encode
    decode_family = decode

    # ------------------------------------------------------------------ identity
    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"posevla-binspec-v{BINSPEC_VERSION};loc={self.n_loc};rot={self.n_rot}".encode())
        for fam in EDGE_FAMILIES:
            e = np.ascontiguousarray(getattr(self, f"{fam}_edges"), dtype="<f8")
            h.update(f";{fam}={e.shape[0] - 1}:".encode())
            h.update(e.tobytes())
        return h.hexdigest()[:16]

    def fingerprint(self) -> str:
        """Short stable hash (16 hex chars) of the counts and edges; the description is not included."""
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BinSpec):
            return NotImplemented
        return self._fingerprint == other._fingerprint and all(
            np.array_equal(getattr(self, f"{f}_edges"), getattr(other, f"{f}_edges")) for f in EDGE_FAMILIES
        )

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        counts = ", ".join(f"{f}={self.num_bins(f)}" for f in FAMILIES)
        return f"BinSpec({counts}, fingerprint={self._fingerprint!r}, description={self.description!r})"

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``version``, ``families`` (count and edges / range), ``description``,
        ``created_with`` and ``fingerprint``."""
        from posevla import __version__

        kind, low, high = _FAMILY_LAYOUT["loc"]
        families: dict[str, Any] = {"loc": {"kind": kind, "count": self.n_loc, "low": low, "high": high}}
        for fam in EDGE_FAMILIES:
            e = getattr(self, f"{fam}_edges")
            families[fam] = {"kind": "edges", "count": int(e.shape[0] - 1), "edges": [float(v) for v in e]}
        kind, low, high = _FAMILY_LAYOUT["rot"]
        families["rot"] = {"kind": kind, "count": self.n_rot, "low": low, "high": high}
        return {
            "version": BINSPEC_VERSION,
            "description": self.description,
            "created_with": {"posevla": __version__},
            "fingerprint": self._fingerprint,
            "families": families,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string (floats written exactly)."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: Any, *, file: str | None = None) -> BinSpec:  # noqa: C901 - one check per field
        """Inverse of :meth:`to_dict`; raises DataError naming the file and field on any problem."""

        def bad(msg: str, fld: str | None, fix: str = _FIX_REGENERATE) -> DataError:
            return DataError(msg, file=file, field=fld, fix=fix)

        if not isinstance(d, dict):
            raise bad(f"expected a JSON object at the top level, got {type(d).__name__}", None)
        for key in ("version", "families"):
            if key not in d:
                raise bad(f"missing key '{key}'", key)
        if d["version"] != BINSPEC_VERSION:
            raise bad(f"unsupported bin spec version {d['version']!r} (this posevla reads {BINSPEC_VERSION})",
                      "version")
        fams = d["families"]
        if not isinstance(fams, dict):
            raise bad("'families' must be an object", "families")
        for fam in FAMILIES:
            if fam not in fams or not isinstance(fams[fam], dict):
                raise bad(f"missing family '{fam}'", f"families.{fam}")
            if "count" not in fams[fam]:
                raise bad(f"missing key 'count' for family '{fam}'", f"families.{fam}.count")
            c = fams[fam]["count"]
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise bad(f"count must be a positive integer, got {c!r}", f"families.{fam}.count")
            kind, low, high = _FAMILY_LAYOUT.get(fam, ("edges", None, None))
            if fams[fam].get("kind", kind) != kind:
                raise bad(f"family '{fam}' has kind {fams[fam]['kind']!r}; this posevla reads '{fam}' bins of kind "
                          f"{kind!r}", f"families.{fam}.kind")
            for key, want in (("low", low), ("high", high)):
                got = fams[fam].get(key, want)
                if want is not None and not (isinstance(got, (int, float)) and abs(float(got) - want) < 1e-9):
                    raise bad(f"family '{fam}' has {key} {got!r}; '{fam}' bins span [{low}, {high}] (they are not "
                              "fitted, so the range is fixed)", f"families.{fam}.{key}")
        edges = {}
        for fam in EDGE_FAMILIES:
            fld = f"families.{fam}.edges"
            if "edges" not in fams[fam]:
                raise bad(f"missing key 'edges' for family '{fam}'", fld)
            raw = fams[fam]["edges"]
            if not isinstance(raw, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw
            ):
                raise bad("edges must be a list of numbers", fld)
            e = np.asarray(raw, dtype=np.float64)
            count = fams[fam]["count"]
            if e.shape[0] != count + 1:
                raise bad(f"family '{fam}' has count {count} but {e.shape[0]} edges (expected count + 1 = "
                          f"{count + 1})", fld)
            if not np.all(np.isfinite(e)):
                raise bad("edges contain non-finite values", fld)
            d_e = np.diff(e)
            if not np.all(d_e > 0):
                i = int(np.argmax(d_e <= 0))
                raise bad(f"edges must be strictly increasing; edge {i + 1} ({e[i + 1]!r}) <= edge {i} "
                          f"({e[i]!r})", fld)
            edges[fam] = e
        if fams["rot"]["count"] < 2:
            raise bad("rot count must be >= 2", "families.rot.count")
        desc = d.get("description", "")
        if not isinstance(desc, str):
            raise bad("description must be a string", "description")
        spec = cls(edges["trans_xy"], edges["trans_z"], edges["size"], n_rot=fams["rot"]["count"],
                   n_loc=fams["loc"]["count"], description=desc)
        fp = d.get("fingerprint")
        if fp is not None and fp != spec.fingerprint():
            raise bad(f"stored fingerprint {fp!r} does not match the content ({spec.fingerprint()!r}); "
                      "the counts or edges were edited or corrupted", "fingerprint")
        return spec

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON to ``path`` (parent directories are created); returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> BinSpec:
        """Read a spec written by :meth:`save`; raises DataError (file, field, fix) when it is unusable."""
        p = Path(path)
        if not p.is_file():
            raise DataError("bin spec file not found", file=str(p),
                            fix="check the path; bins.json is written next to every tokenised dataset and "
                                "checkpoint by BinSpec.save")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"not valid JSON: {exc}", file=str(p), fix=_FIX_REGENERATE) from exc
        return cls.from_dict(d, file=str(p))
