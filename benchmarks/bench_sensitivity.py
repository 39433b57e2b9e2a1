"""Time of a 200-point CDF curve (target: <= 50 ms each on this CPU), printed with the ratio.

    python benchmarks/bench_sensitivity.py [--d 2048] [--points 200] [--repeats 50]
"""
import argparse
import numpy as np

from hpm.sensitivity import empirical_cdf, isotropic_cdf
from timing import median_seconds

PAPER_FC = dict(mu_pos=66.81, sigma_pos=5.56, mu_neg=90.01, sigma_neg=3.02, alpha=0.001)
PAPER_L2 = dict(mu_pos=74.3, sigma_pos=7.9, mu_neg=101.3, sigma_neg=4.3, alpha=0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    u = np.linspace(0, 1, args.points)
    iso = 1000 * median_seconds(lambda: isotropic_cdf(u, args.d), args.repeats)
    emp = 1000 * median_seconds(lambda: empirical_cdf(u, PAPER_FC, PAPER_L2), args.repeats)
    print(f"isotropic CDF, {args.points} points, d = {args.d}: {iso:.2f} ms ({iso / 50:.3f} of the 50 ms target)")
    print(f"empirical CDF, {args.points} points (paper's ImageNet statistics): {emp:.2f} ms ({emp / 50:.3f} of the "
          f"50 ms target)")


if __name__ == "__main__":
    main()
