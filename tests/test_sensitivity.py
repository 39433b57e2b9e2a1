"""Sensitivity analysis (Sec. 3.3-3.4, supp. 7) against direct computation and Monte Carlo simulation.

Monte Carlo tolerances: 5 binomial standard errors sqrt(p(1-p)/n) plus the 1e-4 accuracy target.
"""
import numpy as np
import pytest
import torch

from hpm.sensitivity import (AngleStats, angle_statistics, condition_ratio, empirical_cdf, fc_sensitivity,
                             fit_truncated_normal, isotropic_cdf, isotropic_pdf_cos, isotropic_pdf_sin,
                             l2_sensitivity, l2_sensitivity_sup, measure_sensitivities, sufficient_condition)

PAPER_FC = dict(mu_pos=66.81, sigma_pos=5.56, mu_neg=90.01, sigma_neg=3.02, alpha=0.001)
PAPER_L2 = dict(mu_pos=74.3, sigma_pos=7.9, mu_neg=101.3, sigma_neg=4.3, alpha=0.001)


def mc_tolerance(p: np.ndarray, n: int) -> np.ndarray:
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-4


def random_directions(n: int, d: int, rng) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_eq3_to_5_agree_with_direct_computation():
    g = torch.Generator().manual_seed(0)
    z, eps, w = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g,
                dtype=torch.float64) * 0.1, torch.randn(3, 7, generator=g, dtype=torch.float64)
    for i in range(5):
        for j in range(3):
            fc_direct = abs((eps[i] @ w[j]) / (z[i] @ w[j]))  # relative change of the logit z.w
            assert torch.isclose(fc_sensitivity(z, w, eps)[i, j], fc_direct)
            before, after = (z[i] - w[j]).norm(), (z[i] + eps[i] - w[j]).norm()
            assert torch.isclose(l2_sensitivity(z, w, eps)[i, j], (after - before).abs() / before)
            assert torch.isclose(l2_sensitivity_sup(z, w, eps.norm(dim=1))[i, j], eps[i].norm() / before)
    assert (l2_sensitivity(z, w, eps) <= l2_sensitivity_sup(z, w, eps.norm(dim=1)) + 1e-12).all()  # Eq. 5 bounds Eq. 4


def test_eq8_condition_implies_the_fc_head_is_the_more_sensitive():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(4000, 6, generator=g, dtype=torch.float64)
    w_c, w_d = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    cond = sufficient_condition(z, w_c, w_d, eps)
    assert 0.05 < cond.double().mean() < 0.95  # both cases occur
    s_c, sup_d = fc_sensitivity(z, w_c, eps), l2_sensitivity_sup(z, w_d, eps.norm(dim=1))
    assert (s_c[cond] >= sup_d[cond] * (1 - 1e-12)).all()


def test_measure_sensitivities_on_a_model_has_no_violations():
    import hpm
    from conftest import TinyMLP
    torch.manual_seed(0)
    model = hpm.wrap(TinyMLP(), head="ncm")
    x = torch.rand(32, 3, 32, 32)
    model.head.init_prototypes(torch.cat([model.forward_features(x)] * 2), torch.arange(64) % 4)
    m = measure_sensitivities(model, x, (x + 0.03 * torch.randn_like(x)).clamp(0, 1))
    assert m["S_c"].shape == (32, 4) and m["implication_holds"].all()


@pytest.mark.parametrize("d", [2, 3, 5, 16, 100, 1000, 4096, 8192])
def test_isotropic_cdf_matches_monte_carlo_of_the_definition(d):
    rng = np.random.default_rng(d)
    n = 200_000
    if d <= 100:  # literally: random directions in R^d, angles to fixed axes
        a, b = random_directions(n, d, rng), random_directions(n, d, rng)
        cos_c, cos_d = np.abs(a[:, 0]), np.abs(b[:, 0])
    else:  # cos^2 of a uniform direction's angle to an axis is exactly Beta(1/2, (d-1)/2)
        cos_c, cos_d = np.sqrt(rng.beta(0.5, (d - 1) / 2, n)), np.sqrt(rng.beta(0.5, (d - 1) / 2, n))
    x = cos_c / np.sqrt(1 - cos_d ** 2)
    u = np.quantile(x, [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])  # probe where the CDF actually moves
    mc = (x[None] <= u[:, None]).mean(1)
    assert np.all(np.abs(isotropic_cdf(u, d) - mc) <= mc_tolerance(mc, n))


def test_isotropic_cdf_limits_and_monotonicity():
    for d in (2, 7, 64, 2048, 8192):
        u = np.concatenate([[0.0], np.logspace(-5, 6, 400)])
        f = isotropic_cdf(u, d)
        assert f[0] == 0.0 and abs(f[-1] - 1) < 1e-4 and np.all(np.diff(f) >= -1e-12)


def test_isotropic_cdf_in_two_dimensions_equals_its_one_dimensional_closed_form():
    """d = 2: angles are uniform, P(|cos a| <= c) = 1 - (2/pi) acos(min(1, c)); average over b."""
    from scipy.integrate import quad
    for u in (0.05, 0.5, 1.0, 3.0, 100.0):
        exact = quad(lambda b, u=u: 1 - 2 / np.pi * np.arccos(min(1.0, u * np.sin(b))), 0, np.pi / 2,
                     points=[np.arcsin(min(1.0, 1 / u))], epsabs=1e-12)[0] * 2 / np.pi
        assert abs(isotropic_cdf(u, 2)[0] - exact) < 1e-4, u
    assert abs(isotropic_cdf(1.0, 2)[0] - 0.5) < 1e-4  # |cos|, |sin| of uniform angles: same law


def test_isotropic_cdf_in_the_sharply_peaked_large_d_regime():
    """At d = 8192 the CDF rises within u ~ 1/sqrt(d); it must still be smooth and correct there."""
    d = 8192
    u = np.linspace(0, 0.05, 200)
    f = isotropic_cdf(u, d)
    assert f[0] == 0 and f[-1] > 0.9999 and np.all(np.diff(f) >= 0)
    # Beta-representation Monte Carlo at the median
    rng = np.random.default_rng(0)
    x = np.sqrt(rng.beta(0.5, (d - 1) / 2, 400_000) / (1 - rng.beta(0.5, (d - 1) / 2, 400_000)))
    assert abs(isotropic_cdf(np.median(x), d)[0] - 0.5) < mc_tolerance(0.5, 400_000)


@pytest.mark.parametrize("d", [2, 5, 50, 3000])
def test_isotropic_pdfs_are_densities_of_cos_and_sin(d):
    from scipy.integrate import quad
    assert abs(quad(lambda h: isotropic_pdf_cos(h, d), -1, 1, points=[0])[0] - 1) < 1e-6
    assert abs(quad(lambda t: isotropic_pdf_sin(t, d), 0, 1, limit=400, points=[1 - 10 / d] if d > 20 else None)[0]
               - 1) < 1e-5


def test_bad_dimensions_and_arguments_are_rejected():
    for bad in (1, 2.5):
        with pytest.raises(ValueError, match="integer >= 2"):
            isotropic_cdf(0.5, bad)
    with pytest.raises(ValueError, match=">= 0"):
        isotropic_cdf(-0.1, 10)
    with pytest.raises(ValueError, match="mu_neg"):
        empirical_cdf(0.5, {"mu_pos": 1, "sigma_pos": 1, "sigma_neg": 1, "alpha": 0.5}, PAPER_L2)


def sample_mixture(stats: AngleStats, n: int, rng) -> np.ndarray:
    """Radians from the truncated-normal mixture, by rejection (exact)."""
    out = []
    (w_pos, _, _), _ = stats.components()
    n_pos = round(w_pos * n)
    for (_, mu, sigma), m in zip(stats.components(), (n_pos, n - n_pos)):
        s = np.empty(0)
        while s.size < m:
            draw = rng.normal(mu, sigma, 2 * m + 10)
            s = np.concatenate([s, draw[(draw >= 0) & (draw <= np.pi)]])
        out.append(s[:m])
    return rng.permutation(np.concatenate(out))


@pytest.mark.parametrize("fc, l2", [
    (PAPER_FC, PAPER_L2),
    (dict(mu_pos=52, sigma_pos=9, mu_neg=94, sigma_neg=7, alpha=0.1), dict(mu_pos=25, sigma_pos=8, mu_neg=64,
                                                                            sigma_neg=7.5, alpha=0.1)),
    (dict(mu_pos=5, sigma_pos=20, mu_neg=170, sigma_neg=30, alpha=0.5), dict(mu_pos=3, sigma_pos=10, mu_neg=175,
                                                                             sigma_neg=8, alpha=0.3))])
def test_empirical_cdf_matches_monte_carlo_of_the_truncated_mixtures(fc, l2):
    rng = np.random.default_rng(0)
    n = 300_000
    th_c, th_d = sample_mixture(AngleStats(**fc), n, rng), sample_mixture(AngleStats(**l2), n, rng)
    x = np.abs(np.cos(th_c)) / np.abs(np.sin(th_d))
    u = np.quantile(x, [0.02, 0.2, 0.5, 0.8, 0.98])
    mc = (x[None] <= u[:, None]).mean(1)
    assert np.all(np.abs(empirical_cdf(u, fc, l2) - mc) <= mc_tolerance(mc, n))


def test_empirical_cdf_accepts_mappings_or_dataclasses_and_is_monotone():
    u = np.linspace(0, 3, 300)
    a = empirical_cdf(u, PAPER_FC, PAPER_L2)
    b = empirical_cdf(u, AngleStats(**PAPER_FC), AngleStats(**PAPER_L2))
    assert np.array_equal(a, b) and a[0] == 0 and np.all(np.diff(a) >= -1e-12) and a[-1] > 0.999


def test_truncated_normal_fit_recovers_its_parameters():
    rng = np.random.default_rng(0)
    stats = AngleStats(10.0, 15.0, 10.0, 15.0, 1.0)  # strongly truncated at 0 degrees
    sample = np.degrees(sample_mixture(stats, 50_000, rng))
    mu, sigma = fit_truncated_normal(sample)
    assert abs(mu - 10) < 0.6 and abs(sigma - 15) < 0.4  # a plain mean/std would be far off here
    assert abs(sample.mean() - 10) > 2


def test_angle_statistics_split_positive_and_negative_pairs():
    g = torch.Generator().manual_seed(0)
    k, d = 4, 32
    centres = torch.randn(k, d, generator=g) * 3
    y = torch.arange(800) % k
    z = centres[y] + torch.randn(800, d, generator=g)
    report = angle_statistics(z, y, torch.randn(k, d, generator=g), centres)
    assert report.l2.mu_pos < report.l2.mu_neg and abs(report.l2.alpha - 1 / k) < 1e-12
    assert len(report.theta_d["positive"]) == 800 and len(report.theta_d["negative"]) == 800 * (k - 1)
    ratio = condition_ratio(z.double(), torch.randn(k, d, generator=g).double(), centres.double())
    assert ratio.shape == (800, k)
    assert 0 <= report.max_gap <= 1 and len(report.modelled_cdf) == len(report.u) == 200


def test_figures_have_the_expected_traces():
    from hpm.plots import angle_histogram_figure, cdf_comparison_figure, isotropic_cdf_figure
    fig2 = isotropic_cdf_figure(dims=(2, 64, 2048))
    assert [t.name for t in fig2.data] == ["d = 2", "d = 64", "d = 2048"] and fig2.layout.xaxis.title.text == "|cos γ|"
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(200, 8, generator=g), torch.arange(200) % 4
    report = angle_statistics(z, y, torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g))
    assert len(angle_histogram_figure(report).data) == 8
    names = [t.name for t in cdf_comparison_figure(report).data]
    assert names == ["modelled (Eq. 13)", "empirical (measured pairs)", "isotropic, d = 8"]
