"""Sensitivity analysis of FC vs l2 classifiers (Sec. 3.3-3.4, supp. 7).

Notation: feature ``z``, feature-space perturbation ``eps``, FC class vector ``w_c`` (a row of the FC
weight), l2 prototype ``w_d``; ``theta_c = angle(z, w_c)``, ``theta_d = angle(z, w_d)``,
``gamma = angle(eps, w_c)``.

- Eq. 3  ``S_c = |eps| |cos gamma| / (|z| |cos theta_c|)``        (:func:`fc_sensitivity`)
- Eq. 4  ``S_d = | |z + eps - w_d| - |z - w_d| | / |z - w_d|``     (:func:`l2_sensitivity`)
- Eq. 5  ``sup S_d = |eps| / |z - w_d|``                            (:func:`l2_sensitivity_sup`)
- Eq. 8  ``|cos theta_c| / |sin theta_d| <= |cos gamma|  =>  S_c >= sup S_d``  (:func:`sufficient_condition`)

The probability that Eq. 8 holds is ``F_X(|cos gamma|)`` with ``X = |cos theta_c| / |sin theta_d|``.

**Isotropic case** (Eq. 10-11, 24-29). For a direction uniform on the sphere in R^d, ``cos^2 theta`` follows
``Beta(1/2, (d-1)/2)`` and the angle has density ``C sin^(d-2) theta`` with ``C = 1 / B(1/2, (d-1)/2)``.
Substituting ``eta = sin s`` and ``v = eta^2`` in Eq. 29's inner integral turns it into a regularised
incomplete beta function, and Eq. 29 becomes

    F_X(u) = E_V[ I_{min(1, u^2 (1 - V))}(1/2, (d-1)/2) ],   V ~ Beta(1/2, (d-1)/2)  (V = cos^2 theta_d).

For large d, V concentrates in a sliver of width ~1/d near 0 — fixed-grid quadrature in theta misses it.
:func:`isotropic_cdf` therefore integrates in V's *quantile* space (Gauss-Legendre in p, ``V = Q(p)``),
split where ``u^2 (1 - V) = 1`` so the integrand is smooth on each piece.

**Empirical case** (Eq. 12-13, 30). ``theta_c`` and ``theta_d`` follow mixtures
``alpha TN(mu+, sigma+) + (1 - alpha) TN(mu-, sigma-)`` of normals truncated to [0, pi], independent.
Then ``F_X(u) = E_{theta_d}[ P(|cos theta_c| <= u sin theta_d) ]`` where the inner probability is a difference
of the theta_c mixture's CDF at ``acos(c)`` and ``pi - acos(c)``; the outer expectation is again taken
in quantile space of each truncated-normal component.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch
from scipy import optimize, special, stats
from torch import Tensor

_GL_NODES = 96  # Gauss-Legendre nodes per integral; accuracy is checked against Monte Carlo in the tests
_nodes, _weights = np.polynomial.legendre.leggauss(_GL_NODES)
_P01, _W01 = (_nodes + 1) / 2, _weights / 2  # on [0, 1]


# --- Eq. 3-5, 8 on batches ------------------------------------------------------------------------------
def _cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine between rows of ``a [B, d]`` and rows of ``b [k, d]`` -> ``[B, k]``."""
    return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).t()


def fc_sensitivity(z: Tensor, w_c: Tensor, eps: Tensor) -> Tensor:
    """Eq. 3: relative change of the FC logit ``z . w_c`` under ``eps``; ``z, eps [B, d]``, ``w_c [k, d]`` -> ``[B, k]``."""
    cos_gamma = _cos(eps, w_c).abs()
    cos_theta = _cos(z, w_c).abs()
    return eps.norm(dim=1, keepdim=True) * cos_gamma / (z.norm(dim=1, keepdim=True) * cos_theta)


def l2_sensitivity(z: Tensor, w_d: Tensor, eps: Tensor) -> Tensor:
    """Eq. 4: relative change of the distance ``|z - w_d|`` under ``eps`` -> ``[B, k]``."""
    before = torch.cdist(z, w_d)
    after = torch.cdist(z + eps, w_d)
    return (after - before).abs() / before


def l2_sensitivity_sup(z: Tensor, w_d: Tensor, eps_norm: Tensor) -> Tensor:
    """Eq. 5: ``sup_{|eps| fixed} S_d = |eps| / |z - w_d|``; ``eps_norm [B]`` -> ``[B, k]``."""
    return eps_norm.reshape(-1, 1) / torch.cdist(z, w_d)


def condition_ratio(z: Tensor, w_c: Tensor, w_d: Tensor) -> Tensor:
    """``X = |cos theta_c| / |sin theta_d|`` per (sample, class) -> ``[B, k]``."""
    cos_c = _cos(z, w_c).abs()
    sin_d = (1 - _cos(z, w_d).pow(2)).clamp_min(0).sqrt()
    return cos_c / sin_d


def sufficient_condition(z: Tensor, w_c: Tensor, w_d: Tensor, eps: Tensor) -> Tensor:
    """Eq. 8: ``|cos theta_c| / |sin theta_d| <= |cos gamma|`` -> bool ``[B, k]`` (then ``S_c >= sup S_d``)."""
    return condition_ratio(z, w_c, w_d) <= _cos(eps, w_c).abs()


@torch.no_grad()
def measure_sensitivities(model, x: Tensor, x_perturbed: Tensor, prototypes: Tensor | None = None) -> dict[str, Tensor]:
    """Eq. 3-5 and 8 on a real model: feature perturbation ``eps = phi(x_perturbed) - phi(x)``.

    Args:
        model: an :class:`hpm.HPMClassifier`; ``w_c`` are its FC rows, ``w_d`` its head's prototypes
            (or ``prototypes`` if given, e.g. class means for an FC-only model).
        x, x_perturbed: clean and perturbed (e.g. adversarial) images.

    Returns:
        ``S_c``, ``S_d``, ``sup_S_d`` ``[B, k]``; ``condition`` (Eq. 8) and ``implication_holds``
        (``not condition or S_c >= sup S_d``, which theory says is always True).
    """
    z, z_adv = model.forward_features(x), model.forward_features(x_perturbed)
    eps = z_adv - z
    w_c = model.fc.weight
    w_d = prototypes if prototypes is not None else model.head.prototypes
    s_c = fc_sensitivity(z, w_c, eps)
    sup_d = l2_sensitivity_sup(z, w_d, eps.norm(dim=1))
    cond = sufficient_condition(z, w_c, w_d, eps)
    return {"S_c": s_c, "S_d": l2_sensitivity(z, w_d, eps), "sup_S_d": sup_d, "condition": cond,
            "implication_holds": ~cond | (s_c >= sup_d * (1 - 1e-5))}


# --- Isotropic case (Eq. 10-11, 29) ---------------------------------------------------------------------
def _check_d(d: int) -> float:
    if int(d) != d or d < 2:
        raise ValueError(f"dimension d must be an integer >= 2; got {d}")
    return (d - 1) / 2


def isotropic_pdf_cos(h: np.ndarray | float, d: int) -> np.ndarray:
    """Eq. 10: density of ``H = cos theta`` on [-1, 1] for a uniform direction in R^d: ``C (1 - h^2)^((d-3)/2)``."""
    b = _check_d(d)
    h = np.asarray(h, dtype=float)
    with np.errstate(divide="ignore"):
        log = -special.betaln(0.5, b) + (b - 1) * np.log1p(-h * h)
    return np.where(np.abs(h) <= 1, np.exp(log), 0.0)


def isotropic_pdf_sin(t: np.ndarray | float, d: int) -> np.ndarray:
    """Eq. 10: density of ``T = sin theta`` on [0, 1]: ``2C t^(d-2) / sqrt(1 - t^2)``."""
    b = _check_d(d)
    t = np.asarray(t, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log(2.0) - special.betaln(0.5, b) + (d - 2) * np.log(t) - 0.5 * np.log1p(-t * t)
    return np.where((t >= 0) & (t < 1), np.exp(log), 0.0)


def isotropic_cdf(u: np.ndarray | float, d: int) -> np.ndarray:
    """``F_X(u) = P(|cos theta_c| / |sin theta_d| <= u)`` for independent uniform directions in R^d (Eq. 11, 29).

    Vectorised over ``u >= 0``; accurate to about 1e-6 for d from 2 to tens of thousands.
    """
    b = _check_d(d)
    u = np.atleast_1d(np.asarray(u, dtype=float))
    if np.any(u < 0) or np.any(np.isnan(u)):
        raise ValueError("u must be >= 0")
    # V = cos^2 theta_d ~ Beta(1/2, b). The integrand is 1 where u^2 (1 - V) >= 1, i.e. V <= 1 - 1/u^2.
    with np.errstate(divide="ignore"):
        kink = np.where(u > 1, 1 - 1 / (u * u), 0.0)
    p_kink = special.betainc(0.5, b, kink)  # P(V <= kink)
    p = p_kink[:, None] + (1 - p_kink[:, None]) * _P01[None]  # [n_u, nodes] on [p_kink, 1]
    v = special.betaincinv(0.5, b, p)
    x = np.clip(u[:, None] ** 2 * (1 - v), 0.0, 1.0)
    inner = special.betainc(0.5, b, x)  # P(cos^2 theta_c <= u^2 sin^2 theta_d | theta_d)
    out = p_kink + (1 - p_kink) * (inner * _W01[None]).sum(1)
    return np.clip(out, 0.0, 1.0)


# --- Empirical case (Eq. 12-13, 30) ---------------------------------------------------------------------
@dataclass
class AngleStats:
    """Fitted truncated-normal mixture of angles, in degrees (Eq. 12)."""

    mu_pos: float  # mean angle to the own class vector
    sigma_pos: float
    mu_neg: float  # mean angle to the other classes' vectors
    sigma_neg: float
    alpha: float  # share of positive pairs (1/k when every feature is paired with every class)

    @classmethod
    def coerce(cls, value: "AngleStats | Mapping") -> "AngleStats":
        if isinstance(value, AngleStats):
            return value
        missing = {"mu_pos", "sigma_pos", "mu_neg", "sigma_neg", "alpha"} - set(value)
        if missing:
            raise ValueError(f"angle statistics need keys {sorted(missing)}")
        return cls(**{k: float(value[k]) for k in ("mu_pos", "sigma_pos", "mu_neg", "sigma_neg", "alpha")})

    def to_dict(self) -> dict:
        return asdict(self)

    def components(self) -> list[tuple[float, float, float]]:
        """``(weight, mu, sigma)`` in radians."""
        r = np.pi / 180
        return [(self.alpha, self.mu_pos * r, self.sigma_pos * r), (1 - self.alpha, self.mu_neg * r, self.sigma_neg * r)]

    def pdf(self, theta_deg: np.ndarray) -> np.ndarray:
        """Mixture density per degree at ``theta_deg`` (Eq. 12)."""
        th = np.asarray(theta_deg, dtype=float) * np.pi / 180
        total = sum(w * _tn(mu, s).pdf(th) for w, mu, s in self.components())
        return total * np.pi / 180

    def cdf_rad(self, theta: np.ndarray) -> np.ndarray:
        return sum(w * _tn(mu, s).cdf(theta) for w, mu, s in self.components())


class _TruncNormal:
    """A normal truncated to [0, pi] (radians), closed forms via scipy.special (no per-call overhead)."""

    def __init__(self, mu: float, sigma: float):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0; got {sigma}")
        self.mu, self.sigma = mu, sigma
        self.lo, self.hi = special.ndtr(-mu / sigma), special.ndtr((np.pi - mu) / sigma)
        self.mass = self.hi - self.lo

    def cdf(self, theta: np.ndarray) -> np.ndarray:
        t = np.clip(theta, 0.0, np.pi)
        return (special.ndtr((t - self.mu) / self.sigma) - self.lo) / self.mass

    def ppf(self, p: np.ndarray) -> np.ndarray:
        return np.clip(self.mu + self.sigma * special.ndtri(self.lo + p * self.mass), 0.0, np.pi)

    def pdf(self, theta: np.ndarray) -> np.ndarray:
        inside = (theta >= 0) & (theta <= np.pi)
        return np.where(inside, stats.norm.pdf(theta, self.mu, self.sigma) / self.mass, 0.0)

    def logpdf(self, theta: np.ndarray) -> np.ndarray:
        return stats.norm.logpdf(theta, self.mu, self.sigma) - np.log(self.mass)


_tn = _TruncNormal


def empirical_cdf(u: np.ndarray | float, fc_stats: "AngleStats | Mapping", l2_stats: "AngleStats | Mapping") -> np.ndarray:
    """Modelled ``F_X(u)`` (Eq. 13) with theta_c ~ ``fc_stats`` and theta_d ~ ``l2_stats`` (degrees), independent."""
    fc, l2 = AngleStats.coerce(fc_stats), AngleStats.coerce(l2_stats)
    u = np.atleast_1d(np.asarray(u, dtype=float))
    if np.any(u < 0) or np.any(np.isnan(u)):
        raise ValueError("u must be >= 0")
    out = np.zeros_like(u)
    for weight, mu, sigma in l2.components():  # E over theta_d, component by component, in quantile space
        theta_d = _tn(mu, sigma).ppf(_P01)  # [nodes]
        c = np.clip(u[:, None] * np.abs(np.sin(theta_d))[None], 0.0, 1.0)  # [n_u, nodes]
        lo = np.arccos(c)
        prob = fc.cdf_rad(np.pi - lo) - fc.cdf_rad(lo)  # P(|cos theta_c| <= c)
        out += weight * (prob * _W01[None]).sum(1)
    return np.clip(out, 0.0, 1.0)


def fit_truncated_normal(angles_deg: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(mu, sigma)`` in degrees of a normal truncated to [0, 180] (Eq. 12)."""
    a = np.asarray(angles_deg, dtype=float).ravel()
    if a.size < 2:
        raise ValueError("need at least two angles to fit")
    th = a * np.pi / 180

    def nll(params):
        mu, log_s = params
        return -_tn(mu, np.exp(log_s)).logpdf(th).sum()

    start = [th.mean(), np.log(max(th.std(), 1e-3))]
    res = optimize.minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-7, "maxiter": 2000})
    mu, log_s = res.x if res.success else start
    return float(mu * 180 / np.pi), float(np.exp(log_s) * 180 / np.pi)


def fit_angle_stats(positive_deg: np.ndarray, negative_deg: np.ndarray) -> AngleStats:
    """Fit positive and negative angles separately; ``alpha`` is the share of positive pairs."""
    mp, sp = fit_truncated_normal(positive_deg)
    mn, sn = fit_truncated_normal(negative_deg)
    n_pos, n_neg = np.size(positive_deg), np.size(negative_deg)
    return AngleStats(mp, sp, mn, sn, n_pos / (n_pos + n_neg))


def angles_deg(z: Tensor, vectors: Tensor) -> Tensor:
    """Angles in degrees between features ``z [N, d]`` and class vectors ``[k, d]`` -> ``[N, k]``."""
    return torch.rad2deg(torch.arccos(_cos(z.double(), vectors.double()).clamp(-1, 1)))


def split_pos_neg(angles: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Angles to the own class (positive) and to every other class (negative)."""
    own = torch.nn.functional.one_hot(labels.long(), angles.shape[1]).bool()
    return angles[own].numpy(), angles[~own].numpy()


def ecdf(samples: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Empirical CDF of ``samples`` at ``u``."""
    s = np.sort(np.asarray(samples, dtype=float).ravel())
    return np.searchsorted(s, u, side="right") / s.size


# --- Measured angle statistics (Fig. 3) -------------------------------------------------------------------
@dataclass
class AngleReport:
    """Angles of real features to FC class vectors (theta_c) and to l2 prototypes (theta_d), fitted and compared."""

    fc: AngleStats  # fitted to theta_c
    l2: AngleStats  # fitted to theta_d
    n_samples: int
    num_features: int
    num_classes: int
    u: list[float]  # grid of |cos gamma|
    modelled_cdf: list[float]  # Eq. 13 with the fitted parameters
    empirical_cdf: list[float]  # ECDF of |cos theta_c| / |sin theta_d| over measured (sample, class) pairs
    max_gap: float  # sup over the grid of |modelled - empirical|
    theta_c: dict[str, list[float]]  # {"positive": [...], "negative": [...]} degrees (for plots)
    theta_d: dict[str, list[float]]

    def summary(self) -> dict:
        return {"fc": self.fc.to_dict(), "l2": self.l2.to_dict(), "n_samples": self.n_samples,
                "num_features": self.num_features, "num_classes": self.num_classes, "max_gap": self.max_gap}


def angle_statistics(features: Tensor, labels: Tensor, fc_weight: Tensor, prototypes: Tensor, *,
                     u: np.ndarray | None = None, max_plot_samples: int = 20000, seed: int = 0) -> AngleReport:
    """Measure theta_c and theta_d on features, fit Eq. 12, and compare Eq. 13 with the measured ratio.

    Args:
        features: ``[N, d]`` backbone features (e.g. of the test set).
        labels: ``[N]`` true labels (positive pair = own class).
        fc_weight: ``[k, d]`` FC class vectors ``w_c``.
        prototypes: ``[k, d]`` l2 prototypes ``w_d`` (e.g. an NCM / HPM head's class means).
        u: grid of ``|cos gamma|`` values (default 200 points on [0, 1]).
    """
    if features.ndim != 2 or fc_weight.shape != prototypes.shape or fc_weight.shape[1] != features.shape[1]:
        raise ValueError(f"shapes do not fit: features {tuple(features.shape)}, fc {tuple(fc_weight.shape)}, "
                         f"prototypes {tuple(prototypes.shape)}")
    u = np.linspace(0.0, 1.0, 200) if u is None else np.asarray(u, dtype=float)
    th_c, th_d = angles_deg(features, fc_weight), angles_deg(features, prototypes)  # [N, k]
    c_pos, c_neg = split_pos_neg(th_c, labels)
    d_pos, d_neg = split_pos_neg(th_d, labels)
    fc, l2 = fit_angle_stats(c_pos, c_neg), fit_angle_stats(d_pos, d_neg)
    ratio = condition_ratio(features.double(), fc_weight.double(), prototypes.double()).numpy().ravel()
    modelled, measured = empirical_cdf(u, fc, l2), ecdf(ratio, u)
    rng = np.random.default_rng(seed)

    def thin(a: np.ndarray) -> list[float]:
        return (rng.choice(a, max_plot_samples, replace=False) if a.size > max_plot_samples else a).tolist()

    return AngleReport(fc, l2, int(features.shape[0]), int(features.shape[1]), int(fc_weight.shape[0]), u.tolist(),
                       modelled.tolist(), measured.tolist(), float(np.abs(modelled - measured).max()),
                       {"positive": thin(c_pos), "negative": thin(c_neg)},
                       {"positive": thin(d_pos), "negative": thin(d_neg)})
