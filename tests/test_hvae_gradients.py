"""The HVAE's hand-written backward pass against central finite differences in float64 (MATH.md §10):
both structures, 2-3 levels, both likelihoods and KL estimators, and the training objective with
beta and free bits per level. Error: ||g_fd - g|| / ||g_fd|| per parameter tensor (< 1e-6)."""
import numpy as np
import pytest

from hvae_cases import CASES, build, case_id
from test_gradients import fd_grad, rel_err


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_elbo_gradient_matches_finite_differences(case):
    h, x, eps = build(case)
    _, g = h.elbo_grad(x, eps=eps, kl=case["kl"])
    fd = fd_grad(lambda: h.elbo(x, eps=eps, kl=case["kl"]).elbo.mean(), h.parameters(), h.set_parameters)
    errs = {n: rel_err(fd[n], g[n]) for n in fd}
    assert max(errs.values()) < 1e-6, errs
    assert all(np.linalg.norm(fd[n]) > 0 for n in fd if not n.endswith("logvar") or "decoder.0" not in n)


@pytest.mark.parametrize("structure,kl", [("markov", "analytic"), ("topdown", "analytic"), ("topdown", "mc")])
def test_objective_gradient_with_beta_and_free_bits_per_level(structure, kl):
    """J = mean rec - beta * sum_l max(lambda, mean_b kl_levels[b, l]) with lambda between the
    levels' terms, so that free bits bind on some levels only."""
    case = dict(structure=structure, z_dims=(3, 2, 2), hidden=(5,), activation="tanh", likelihood="bernoulli",
                decoder_var="learned", kl=kl, S=2)
    h, x, eps = build(case, n=6)
    r = h.elbo(x, eps=eps, kl=kl)
    kbar = r.kl_levels.mean(axis=0)
    lam = float(np.sort(kbar)[1] + 1e-3)  # above two levels, below the largest
    assert (kbar < lam).sum() == 2 and (kbar > lam).sum() == 1, kbar
    for beta, free_bits in ((0.3, 0.0), (1.7, lam)):
        J, g = h.objective_grad(x, eps=eps, kl=kl, beta=beta, free_bits=free_bits)
        expect = r.reconstruction.mean() - beta * (np.maximum(free_bits, kbar) if free_bits else kbar).sum()
        assert J == pytest.approx(expect, rel=1e-12, abs=1e-12)
        fd = fd_grad(lambda: h.objective_grad(x, eps=eps, kl=kl, beta=beta, free_bits=free_bits)[0],
                     h.parameters(), h.set_parameters)
        errs = {n: rel_err(fd[n], g[n]) for n in fd}
        assert max(errs.values()) < 1e-6, errs
