"""Vectorised CrystalNN "ops" site fingerprint: the 61 values of matminer's ``CrystalNNFingerprint`` preset.

The structure fingerprint of CDVAE's metrics is matminer's ``CrystalNNFingerprint.from_preset("ops")``. Most
of its time goes into pymatgen's pure-Python ``LocalStructOrderParams.get_order_parameters``, which loops over
every neighbour triple (j, k, m) in Python. This module computes the same numbers with NumPy, broadcasting
over all triples of one coordination number at once (CN <= 12 for every order parameter of the preset, so
the (n, n, n) arrays are tiny).

Definitions:

- the motif order parameters (``bent``, ``tet_max``, ``oct_max``, ``bcc``, ``cuboct_max``, ...):
  N. E. R. Zimmermann, M. K. Horton, A. Jain, M. Haranczyk, "Assessing local structure motifs using order
  parameters for motif recognition, interstitial identification, and diffusion path characterization",
  Front. Mater. 4, 34 (2017);
- the bond-orientational order parameters q2, q4, q6: P. J. Steinhardt, D. R. Nelson, M. Ronchetti,
  Phys. Rev. B 28, 784 (1983);
- reference implementation reproduced here: pymatgen ``LocalStructOrderParams`` (pymatgen/core/local_env.py)
  called, as matminer ``CrystalNNFingerprint`` preset ``"ops"`` calls it, with ONE order-parameter type per
  ``LocalStructOrderParams`` object and the CrystalNN neighbours of the site.

Conventions of the reference kept on purpose (they decide the last digits, and sometimes more):

- pair (j, k) with neighbour j at the North pole: ``theta_k = acos(clip(u_j . u_k))``; the prime meridian is
  the Gram-Schmidt part of u_k orthogonal to u_j, ``u_k - (u_k . u_j) / (u_j . u_j) u_j``; when its norm is
  below 1e-12 the pair gets no third-neighbour terms at all. The azimuth of m is ``acos(clip(x_m . x_k))`` of
  the normalised Gram-Schmidt parts; when the part of m is below 1e-12 only the South-pole term (below) counts
  for m;
- the South-pole term of the bipyramid-like types (``tri_bipyr``, ``pent_bipyr``, ``hex_bipyr``, ``oct_max``,
  ``sq_plan_max``, ``hex_plan_max``, ``see_saw_rect``) is added for every m with ``theta_m >= min_SPP``,
  whatever theta_k is and whether or not m's azimuth is defined -- the single-type reading of pymatgen's
  code, which is what matminer runs (several types in one ``LocalStructOrderParams`` would give other values);
- ``*_max`` and pyramid types: each (j, k) entry is divided by its own normaliser (0 when that is <= 1e-12)
  and the maximum over all entries is taken; ``bcc`` uses only j < k and a fixed normaliser; ``bent``
  averages;
- q_l: pymatgen's polar/azimuth convention (azimuth 0 when ``|z| >= 1 - 1e-12``) and its real-coefficient
  spherical harmonics;
- an order parameter that cannot be computed (``None`` in pymatgen, e.g. one neighbour) gives 0, as
  matminer's ``opval or 0`` does; every value is multiplied by CrystalNN's weight of its coordination number.

Dot products use ``np.vecdot``, which goes through the same BLAS dot as the ``np.inner`` of the reference, so
the cosines fed to ``acos`` (whose derivative is unbounded at +-1) are the same floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import cache, cached_property
from typing import Any

import numpy as np

__all__ = [
    "MAX_CN",
    "N_FEATURES",
    "OPS_PRESET",
    "ops_fingerprint_from_nndata",
    "ops_site_fingerprint",
]

MAX_CN = 24
"""Largest coordination number of the fingerprint (a ``wt`` entry for each of 1..24)."""

_TET_ANGLE = 0.6081734479693927  # tetrahedral angle / 180 degrees
_SPP_135 = 2.356194490192345  # 135 degrees, in radians

OPS_PRESET: dict[int, tuple[tuple[str, dict[str | int, float] | None], ...]] = {
    1: (("sgl_bd", None),),
    2: (
        ("bent", {"TA": 0.5, "IGW_TA": 15.15}),
        ("bent", {"TA": 0.5802777777777778, "IGW_TA": 13.95}),
        ("bent", {"TA": 0.666666666667, "IGW_TA": 13.25}),
        ("bent", {"TA": 0.833333333333333, "IGW_TA": 12.45}),
        ("bent", {"TA": 1, "IGW_TA": 8.667}),
    ),
    3: (
        ("tri_plan_max", {"IGW_TA": 17.5, "TA": 0.66666666667, "fac_AA": 1, "exp_cos_AA": 2}),
        ("tet_max", {"TA": _TET_ANGLE, "IGW_TA": 18.33, "fac_AA": 1.5, "exp_cos_AA": 2}),
        ("T", {"IGW_EP": 15.5, "fac_AA": 1, "exp_cos_AA": 2}),
    ),
    4: (
        (
            "sq_plan_max",
            {"min_SPP": _SPP_135, "IGW_SPP": 13.5, "IGW_EP": 17.7, "w_SPP": 1, "fac_AA": 1, "exp_cos_AA": 2},
        ),
        ("tet_max", {"IGW_TA": 18.5, "TA": _TET_ANGLE, "fac_AA": 1.5, "exp_cos_AA": 2}),
        ("see_saw_rect", {"min_SPP": _SPP_135, "IGW_SPP": 11.5, "IGW_EP": 27, "fac_AA": 2, "exp_cos_AA": 2}),
        (
            "tri_bipyr",
            {
                "min_SPP": _SPP_135,
                "IGW_EP": 15.75,
                "IGW_SPP": 12.75,
                "fac_AA": 1.5,
                "exp_cos_AA": 2,
                "w_SPP": 1,
            },
        ),
        ("tri_pyr", {"IGW_EP": 15.5, "fac_AA": 1.5, "exp_cos_AA": 2}),
    ),
    5: (
        ("pent_plan_max", {"TA": 0.6, "IGW_TA": 19.333}),
        ("sq_pyr", {"IGW_EP": 14.9, "fac_AA": 2, "exp_cos_AA": 2}),
        (
            "tri_bipyr",
            {"min_SPP": _SPP_135, "IGW_SPP": 12, "IGW_EP": 16.6, "fac_AA": 1.5, "exp_cos_AA": 2, "w_SPP": 1},
        ),
    ),
    6: (
        (
            "hex_plan_max",
            {
                "min_SPP": 2.6179938779914944,
                "IGW_SPP": 7.5,
                "w_SPP": 1,
                "fac_AA": 1,
                "exp_cos_AA": 2,
                "IGW_TA": 25,
                "TA": 0.16666667,
            },
        ),
        (
            "oct_max",
            {"min_SPP": _SPP_135, "IGW_SPP": 15, "IGW_EP": 18, "w_SPP": 1, "fac_AA": 2, "exp_cos_AA": 2},
        ),
        ("pent_pyr", {"IGW_EP": 13.8, "fac_AA": 2.5, "exp_cos_AA": 2}),
    ),
    7: (
        ("hex_pyr", {"IGW_EP": 12.5, "fac_AA": 3, "exp_cos_AA": 2}),
        (
            "pent_bipyr",
            {
                "min_SPP": _SPP_135,
                "IGW_SPP": 12.5,
                "IGW_EP": 14.75,
                "fac_AA": 2.5,
                "exp_cos_AA": 2,
                "w_SPP": 1,
            },
        ),
    ),
    8: (
        ("bcc", {"min_SPP": 2.5261129449194057, "IGW_SPP": 15, "w_SPP": 6}),
        (
            "hex_bipyr",
            {"min_SPP": _SPP_135, "IGW_SPP": 14.1, "IGW_EP": 13.6, "fac_AA": 3, "exp_cos_AA": 2, "w_SPP": 1},
        ),
    ),
    9: (("q2", None), ("q4", None), ("q6", None)),
    10: (("q2", None), ("q4", None), ("q6", None)),
    11: (("q2", None), ("q4", None), ("q6", None)),
    12: (
        # pymatgen's default cuboct_max parameters; the integer keys are pymatgen's own names:
        # 2 and 4 bound the "equatorial" theta_k window (105 and 75 degrees), 5 and 6 are inverse Gaussian
        # widths.
        (
            "cuboct_max",
            {
                "min_SPP": 2.792526803190927,
                "IGW_SPP": 28.75,
                2: 1.8325957145940461,
                "w_SPP": 1.8,
                4: 1.3089969389957472,
                5: 25.5,
                6: 31.25,
            },
        ),
        ("q2", None),
        ("q4", None),
        ("q6", None),
    ),
}
"""matminer's ``CrystalNNFingerprint.from_preset("ops")``: per CN, the (type, parameters) after its ``wt``."""

N_FEATURES = sum(1 + len(OPS_PRESET.get(cn, ())) for cn in range(1, MAX_CN + 1))  # 61

_INV_PI = 1 / math.pi
_VERY_SMALL = 1e-12  # pymatgen's "very_small" (length threshold, Angstrom-like units)
_LEFT_OF_UNITY = 1 - 1e-12
_FAC_BCC = 1 / math.exp(-0.5)
_ASIN_THIRD = math.asin(1 / 3)


def _gauss(x: np.ndarray) -> np.ndarray:
    """exp(-x^2 / 2), evaluated as the reference does."""
    return np.exp(-0.5 * x * x)


@cache
def _index_masks(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) mask j != k and (n, n, n) mask of triples with j, k, m pairwise distinct (read-only, shared)."""
    pair = ~np.eye(n, dtype=bool)
    triple = pair[:, :, None] & pair[:, None, :] & pair[None, :, :]
    pair.flags.writeable = triple.flags.writeable = False
    return pair, triple


class _Neighbourhood:
    """Geometry of one site and its n neighbours for one CN: angles of all pairs and azimuths of all triples.

    Index convention: ``theta[j, k]`` is the angle between bonds j and k; ``phi[j, k, m]`` is the azimuth of m
    around the axis of j, measured from the half-plane of k.
    """

    def __init__(self, center: np.ndarray, neighbors: np.ndarray) -> None:
        rij = neighbors - center
        self.n = len(neighbors)
        self.dist = np.sqrt(np.vecdot(rij, rij))
        self.unit = rij / self.dist[:, None]

    @property
    def pair(self) -> np.ndarray:
        """(n, n) mask j != k."""
        return _index_masks(self.n)[0]

    @cached_property
    def cos(self) -> np.ndarray:
        """(n, n) unclipped dot products u_j . u_k."""
        return np.vecdot(self.unit[:, None, :], self.unit[None, :, :])

    @cached_property
    def theta(self) -> np.ndarray:
        """(n, n) bond angles."""
        return np.arccos(self.cos.clip(-1.0, 1.0))

    @cached_property
    def theta_pi(self) -> np.ndarray:
        """(n, n) bond angles in units of pi (multiplied by 1/pi, as the reference does)."""
        return self.theta * _INV_PI

    @cached_property
    def _meridians(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit Gram-Schmidt parts x[j, k] of u_k orthogonal to u_j, and the mask where they are undefined."""
        u = self.unit
        ortho = u[None, :, :] - (self.cos / np.vecdot(u, u)[:, None])[:, :, None] * u[:, None, :]
        norm = np.sqrt(np.vecdot(ortho, ortho))
        degenerate = norm < _VERY_SMALL
        x = np.divide(ortho, norm[:, :, None], out=np.zeros_like(ortho), where=~degenerate[:, :, None])
        return x, degenerate

    @cached_property
    def phi(self) -> np.ndarray:
        """(n, n, n) azimuths phi[j, k, m] in [0, pi]."""
        x, _ = self._meridians
        return np.arccos(np.vecdot(x[:, :, None, :], x[:, None, :, :]).clip(-1.0, 1.0))

    @cached_property
    def south_mask(self) -> np.ndarray:
        """(n, n, n): triples with any third-neighbour term (m not in {j, k}, meridian of k defined)."""
        _, degenerate = self._meridians
        return _index_masks(self.n)[1] & ~degenerate[:, :, None]

    @cached_property
    def full_mask(self) -> np.ndarray:
        """(n, n, n): triples whose azimuth is defined too (meridian of m defined)."""
        _, degenerate = self._meridians
        return self.south_mask & ~degenerate[:, None, :]

    @cached_property
    def polar(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """sin(theta), cos(theta) and phi of every bond in the lab frame (z = North pole, x = prime meridian).

        phi is 0 for bonds within 1e-12 of the z axis (in cos theta), as in the reference.
        """
        u = self.unit
        z = u[:, 2]
        theta = np.arccos(z.clip(-1.0, 1.0))
        off_axis = (-_LEFT_OF_UNITY < z) & (z < _LEFT_OF_UNITY)
        rho = np.sqrt(u[:, 0] * u[:, 0] + u[:, 1] * u[:, 1])
        cos_phi = np.divide(u[:, 0], rho, out=np.ones(self.n), where=off_axis)
        phi = np.where(off_axis, np.arccos(cos_phi.clip(-1.0, 1.0)), 0.0)
        phi = np.where(off_axis & (u[:, 1] < 0.0), -phi, phi)
        return np.sin(theta), np.cos(theta), phi


def _max_of_normalised(geo: _Neighbourhood, qsp: np.ndarray, norm: np.ndarray) -> float | None:
    """Max over pairs (j, k) of qsp / norm (0 where norm <= 1e-12); None for fewer than two neighbours."""
    if geo.n <= 1:
        return None
    ratio = qsp / np.where(norm > 1e-12, norm, np.inf)
    return float(ratio[geo.pair].max())


def _sum_m(mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum over m of the (broadcast) triple terms where ``mask[j, k, m]``, and the number of terms."""
    return np.where(mask, values, 0.0).sum(axis=2), mask.sum(axis=2)


def _at_m(pair_values: np.ndarray) -> np.ndarray:
    """A function of the bond pair (j, m), laid out for triples (j, k, m)."""
    return pair_values[:, None, :]


def _at_k(pair_values: np.ndarray) -> np.ndarray:
    """A function of the bond pair (j, k), laid out for triples (j, k, m)."""
    return pair_values[:, :, None]


def _cos_term(phi: np.ndarray, p: Mapping[Any, float]) -> np.ndarray:
    """cos(fac_AA * phi) ** exp_cos_AA."""
    return np.cos(p["fac_AA"] * phi) ** p["exp_cos_AA"]


# ---- one function per family of order parameters: f(geometry, type, parameters) -> value or None ----
# A Gaussian of the bond angle is computed once on the (n, n) angles and serves both the j-i-k term (theta_k)
# and, broadcast with _at_m, the j-i-m terms of the triples (theta_m).


def _single_bond(geo: _Neighbourhood, typ: str, p: Mapping[Any, float] | None) -> float | None:
    """sgl_bd: 1 - d_1 / d_2 of the two shortest bonds (1 for a single neighbour)."""
    if geo.n == 0:
        return 0.0
    if geo.n == 1:
        return 1.0
    d = np.sort(geo.dist)
    return float(1 - d[0] / d[1])


def _bent(geo: _Neighbourhood, typ: str, p: Mapping[Any, float]) -> float | None:
    """bent: mean over ordered pairs of a Gaussian of the bond angle around the target angle TA."""
    if geo.n <= 1:
        return None
    terms = _gauss(p["IGW_TA"] * (geo.theta_pi - p["TA"]))[geo.pair]
    return float(terms.sum() / terms.size)


def _angle_max(geo: _Neighbourhood, typ: str, p: Mapping[Any, float]) -> float | None:
    """tri_plan_max, tet_max: Gaussians of theta_k and theta_m around TA, azimuth term for m."""
    angle = _gauss(p["IGW_TA"] * (geo.theta_pi - p["TA"]))
    trip_sum, trip_count = _sum_m(geo.full_mask, _at_m(angle) * _cos_term(geo.phi, p))
    return _max_of_normalised(geo, angle + trip_sum, 1 + trip_count)


def _pyramid(geo: _Neighbourhood, typ: str, p: Mapping[Any, float]) -> float | None:
    """T, tri_pyr, sq_pyr, pent_pyr, hex_pyr: neighbours in the plane perpendicular to bond j."""
    equatorial = _gauss(p["IGW_EP"] * (geo.theta_pi - 0.5))
    trip_sum, trip_count = _sum_m(geo.full_mask, _cos_term(geo.phi, p) * _at_m(equatorial))
    return _max_of_normalised(geo, equatorial + trip_sum, 1 + trip_count)


def _bipyramid(geo: _Neighbourhood, typ: str, p: Mapping[Any, float]) -> float | None:
    """tri/pent/hex_bipyr, oct_max, sq_plan_max, hex_plan_max, see_saw_rect: equatorial belt, South pole."""
    if typ == "hex_plan_max":
        equatorial = _gauss(p["IGW_TA"] * (np.fabs(geo.theta_pi - 0.5) - p["TA"]))
    else:
        equatorial = _gauss(p["IGW_EP"] * (geo.theta_pi - 0.5))
    below = geo.theta < p["min_SPP"]  # not at the South pole
    pole = _gauss(p["IGW_SPP"] * (geo.theta_pi - 1.0))

    # South pole: every m with theta_m >= min_SPP, whatever theta_k and whether or not phi is defined
    south_sum, south_count = _sum_m(geo.south_mask & ~_at_m(below), _at_m(pole))

    belt = geo.full_mask & _at_m(below) & _at_k(below)
    if typ == "see_saw_rect":
        belt = belt & (geo.phi < 0.75 * math.pi)
    belt_sum, belt_count = _sum_m(belt, _cos_term(geo.phi, p) * _at_m(equatorial))

    pair = np.where(below, equatorial, 0.0)
    return _max_of_normalised(geo, pair + south_sum + belt_sum, below + south_count + belt_count)


def _pent_plan_max(geo: _Neighbourhood, typ: str, p: Mapping[Any, float]) -> float | None:
    """pent_plan_max: angles near 72 or 144 degrees (split at TA * 180 degrees), azimuth term cos^2."""
    target = np.where(geo.theta <= p["TA"] * math.pi, 0.4, 0.8)
    angle = _gauss(p["IGW_TA"] * (geo.theta_pi - target))
    trip_sum, trip_count = _sum_m(geo.full_mask, _at_m(angle) * np.cos(geo.phi) ** 2)
    return _max_of_normalised(geo, angle + trip_sum, 1 + trip_count)


def _bcc(geo: _Neighbourhood, typ: str, p: Mapping[Any, float]) -> float | None:
    """bcc (Peters-style): j < k only, South-pole pairs plus a cos(3 phi) term; fixed normaliser."""
    n = geo.n
    if n <= 3:
        return None
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)  # j < k
    below = geo.theta < p["min_SPP"]
    pair = np.where(upper & ~below, p["w_SPP"] * _gauss(p["IGW_SPP"] * (geo.theta_pi - 1.0)), 0.0)

    sign = np.where(geo.theta > math.pi / 2.0, 1.0, -1.0)  # of theta_k
    t = (geo.theta - math.pi / 2.0) / _ASIN_THIRD  # of theta_m
    radial = _FAC_BCC * t * np.exp(-0.5 * t * t)
    mask = geo.full_mask & _at_k(upper & below)
    trip = _at_k(sign) * np.cos(3 * geo.phi) * _at_m(radial)
    total = pair.sum() + np.where(mask, trip, 0.0).sum()
    return float(total / (0.5 * float(n * (6 + (n - 2) * (n - 3)))))


def _cuboct_max(geo: _Neighbourhood, typ: str, p: Mapping[Any, float]) -> float | None:
    """cuboct_max: South-pole pair term, then m in the equatorial belt (cos^2 phi) or the two tilted rings."""
    lo, hi = p[4], p[2]  # window of theta (75 and 105 degrees)
    theta, theta_pi, phi = geo.theta, geo.theta_pi, geo.phi
    south = theta >= p["min_SPP"]
    pair = np.where(south, p["w_SPP"] * _gauss(p["IGW_SPP"] * (theta_pi - 1.0)), 0.0)
    pair_norm = np.where(south, p["w_SPP"], 0.0)

    middle = (lo < theta) & (theta < hi)
    base = geo.full_mask & _at_m(~south) & _at_k(middle)
    belt = base & _at_m(middle)
    upper_ring = base & _at_m(theta < lo)
    lower_ring = base & _at_m(theta > hi)
    ring_azimuth = _gauss(0.0556 * (np.cos(phi - 0.5 * math.pi) - 0.81649658))
    trip = np.where(belt, np.cos(phi) ** 2 * _at_m(_gauss(p[5] * (theta_pi - 0.5))), 0.0)
    trip = np.where(upper_ring, ring_azimuth * _at_m(_gauss(p[6] * (theta_pi - 1 / 3))), trip)
    trip = np.where(lower_ring, ring_azimuth * _at_m(_gauss(p[6] * (theta_pi - 2 / 3.0))), trip)
    trip_sum, trip_count = _sum_m(belt | upper_ring | lower_ring, trip)
    return _max_of_normalised(geo, pair + trip_sum, pair_norm + trip_count)


# Real-coefficient spherical harmonics Y_lm, m >= 0, as coef * sin(theta)^m * poly(cos(theta)) * exp(i m phi)
# (poly coefficients in ascending powers of cos(theta)); |sum Y_l,-m| equals |sum Y_lm|.
_Y_LM: dict[int, tuple[tuple[int, float, tuple[float, ...]], ...]] = {
    2: (
        (0, 0.25 * math.sqrt(5 / math.pi), (-1, 0, 3)),
        (1, 0.5 * math.sqrt(15 / (2 * math.pi)), (0, 1)),
        (2, 0.25 * math.sqrt(15 / (2 * math.pi)), (1,)),
    ),
    4: (
        (0, 3 / 16 * math.sqrt(1 / math.pi), (3, 0, -30, 0, 35)),
        (1, 3 / 8 * math.sqrt(5 / math.pi), (0, -3, 0, 7)),
        (2, 3 / 8 * math.sqrt(5 / (2 * math.pi)), (-1, 0, 7)),
        (3, 3 / 8 * math.sqrt(35 / math.pi), (0, 1)),
        (4, 3 / 16 * math.sqrt(35 / (2 * math.pi)), (1,)),
    ),
    6: (
        (0, 1 / 32 * math.sqrt(13 / math.pi), (-5, 0, 105, 0, -315, 0, 231)),
        (1, 1 / 16 * math.sqrt(273 / (2 * math.pi)), (0, 5, 0, -30, 0, 33)),
        (2, 1 / 64 * math.sqrt(1365 / math.pi), (1, 0, -18, 0, 33)),
        (3, 1 / 32 * math.sqrt(1365 / math.pi), (0, -3, 0, 11)),
        (4, 3 / 32 * math.sqrt(91 / (2 * math.pi)), (-1, 0, 11)),
        (5, 3 / 32 * math.sqrt(1001 / math.pi), (0, 1)),
        (6, 1 / 64 * math.sqrt(3003 / math.pi), (1,)),
    ),
}


@cache
def _harmonic_tables(degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For degree l: orders m (column), coefficients (column), polynomial matrix, weights of the orders."""
    terms = _Y_LM[degree]
    orders = np.array([m for m, _, _ in terms], dtype=float)[:, None]
    coefs = np.array([c for _, c, _ in terms])[:, None]
    poly = np.zeros((len(terms), degree + 1))
    for row, (_, _, coeffs) in enumerate(terms):
        poly[row, : len(coeffs)] = coeffs
    weights = np.where(orders[:, 0] == 0, 1.0, 2.0)  # m and -m contribute alike
    return orders, coefs, poly, weights


def _boop(geo: _Neighbourhood, typ: str, p: Mapping[Any, float] | None) -> float | None:
    """q2, q4, q6 (Steinhardt): sqrt(4 pi / (2l + 1) * sum_m |mean_i Y_lm(theta_i, phi_i)|^2)."""
    n = geo.n
    if n == 0:
        return None
    degree = int(typ[1:])
    orders, coefs, poly, weights = _harmonic_tables(degree)
    sin_t, cos_t, phi = geo.polar
    cos_powers = cos_t[None, :] ** np.arange(degree + 1)[:, None]  # (l + 1, n)
    radial = coefs * sin_t[None, :] ** orders * (poly @ cos_powers)  # (m, n)
    angle = orders * phi[None, :]
    real = (radial * np.cos(angle)).sum(axis=1)
    imag = (radial * np.sin(angle)).sum(axis=1)
    acc = float(weights @ (real * real + imag * imag))
    return math.sqrt(4 * math.pi * acc / ((2 * degree + 1) * float(n * n)))


_FAMILIES: dict[str, Callable[[_Neighbourhood, str, Any], float | None]] = {
    "sgl_bd": _single_bond,
    "bent": _bent,
    "tri_plan_max": _angle_max,
    "tet_max": _angle_max,
    "T": _pyramid,
    "tri_pyr": _pyramid,
    "sq_pyr": _pyramid,
    "pent_pyr": _pyramid,
    "hex_pyr": _pyramid,
    "tri_bipyr": _bipyramid,
    "pent_bipyr": _bipyramid,
    "hex_bipyr": _bipyramid,
    "oct_max": _bipyramid,
    "sq_plan_max": _bipyramid,
    "hex_plan_max": _bipyramid,
    "see_saw_rect": _bipyramid,
    "pent_plan_max": _pent_plan_max,
    "bcc": _bcc,
    "cuboct_max": _cuboct_max,
    "q2": _boop,
    "q4": _boop,
    "q6": _boop,
}


def ops_site_fingerprint(
    center: np.ndarray,
    cn_weights: Mapping[int, float],
    cn_neighbors: Mapping[int, np.ndarray],
) -> np.ndarray:
    """The 61 values of matminer's ``CrystalNNFingerprint.from_preset("ops").featurize`` for one site.

    Args:
        center: Cartesian coordinates of the site, shape (3,).
        cn_weights: CrystalNN's ``nndata.cn_weights`` (CN -> weight; missing CNs weigh 0).
        cn_neighbors: For every CN <= 12 with a non-zero weight, the Cartesian coordinates (periodic images
            included) of ``nndata.cn_nninfo[cn]``'s sites, in that order, shape (cn, 3).

    Returns:
        Array of shape (61,) in matminer's order: for CN = 1..24, its weight, then weight * order parameter
        for each order parameter of the preset at that CN.
    """
    center = np.asarray(center, dtype=float)
    out = np.zeros(N_FEATURES)
    pos = 0
    for cn in range(1, MAX_CN + 1):
        weight = cn_weights.get(cn, 0)
        out[pos] = weight
        ops = OPS_PRESET.get(cn, ())
        if weight != 0 and ops:
            neighbors = np.asarray(cn_neighbors[cn], dtype=float).reshape(-1, 3)
            geo = _Neighbourhood(center, neighbors)
            for offset, (typ, params) in enumerate(ops, start=1):
                value = _FAMILIES[typ](geo, typ, params)
                out[pos + offset] = weight * (value or 0)  # None -> 0, as matminer's ``opval or 0``
        pos += 1 + len(ops)
    return out


def ops_fingerprint_from_nndata(structure: Any, idx: int, nndata: Any) -> np.ndarray:
    """:func:`ops_site_fingerprint` of site ``idx`` from CrystalNN's ``get_nn_data(structure, idx)``."""
    neighbors = {
        cn: np.array([info["site"].coords for info in nndata.cn_nninfo[cn]], dtype=float).reshape(-1, 3)
        for cn, ops in OPS_PRESET.items()
        if ops and nndata.cn_weights.get(cn, 0) != 0
    }
    return ops_site_fingerprint(structure[idx].coords, nndata.cn_weights, neighbors)
