"""Perturbation radii as people write them: ``8/255`` in, ``8/255`` out."""
from __future__ import annotations

from fractions import Fraction


def parse_eps(text: str) -> float:
    """``"8/255"``, ``"0.25/255"`` or ``"0.0314"`` -> float.

    Raises:
        ValueError: not a number or fraction, or negative.
    """
    numerator, _, denominator = text.partition("/")
    if "/" in denominator:
        raise ValueError(f"not a number or fraction: {text!r} (e.g. 8/255 or 0.031)")
    try:
        value = float(Fraction(numerator) / Fraction(denominator or 1))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number or fraction: {text!r} (e.g. 8/255 or 0.031)") from None
    if not value >= 0:
        raise ValueError(f"must be >= 0: {text!r}")
    return value


def meant_per_255(eps: float, limit: float) -> str | None:
    """``"8/255"`` for a radius ``8`` that reads as a count of 1/255 steps and, so read, is within ``limit``;
    None for any other radius (below 1, or too large either way)."""
    return f"{eps:g}/255" if 1 <= eps and eps / 255 <= limit else None


def eps_text(eps: float) -> str:
    """``0.0313725`` -> ``"8/255"``; radii that are not k/255 (or k/510) print as decimals."""
    frac = Fraction(eps).limit_denominator(1020)
    if abs(float(frac) - eps) < 1e-9 and 255 * 4 % frac.denominator == 0:
        return f"{float(frac) * 255:g}/255"
    return f"{eps:.6g}"
