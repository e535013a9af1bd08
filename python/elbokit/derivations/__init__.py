"""The derivation tracer: every line of the standard ELBO derivations evaluated on a model.

A :class:`Derivation` is data: a list of :class:`Step` s, each with its LaTeX, a function that
estimates its value on (model, x) with a Monte-Carlo standard error (and its closed form where the
model has one), and the relation to the next line (``=``, ``≥``, ``≤``) with its justification.
``trace(derivation, model, x, n_samples, seed)`` evaluates every line and checks every relation
(:class:`TraceResult`).

Estimates. Every line is a mean over the n data points of a per-point quantity. A Monte-Carlo
line carries ``units`` (S, n): per-sample contributions whose mean over samples is the per-point
estimate (for the log of a mean, the delta-method linearization
``log w̄ + w/w̄ − 1``). Its standard error is conditional on x (Monte-Carlo noise only):
``se² = Σ_i var_s(units[:, i]) / (S n²)``. Two lines drawn from the same samples (the same ``key``)
are compared by their paired differences, so the standard error of a difference is honest.

Relations (the lead's rule): ``=`` holds if |a − b| <= 4 s.e.(a − b), ``≥`` if a − b >= −4 s.e.,
``≤`` if a − b <= 4 s.e.; between two exact values the floor is 1e-9 relative (float64 code paths;
1e-5 where a float32 engine computed a line). A line with a closed form also agrees with it within
4 s.e. A log-mean estimate whose smallest effective sample size is below 5 is marked unreliable
(its delta-method s.e. is not trustworthy), and its relations read "?" rather than a verdict.

Derivations (``DERIVATIONS``; MATH.md sections in brackets): "jensen" (§2), "gap" (§2),
"reconstruction_kl" (§2), "hvae" (§6), "diffusion" (§7), "em" (§5), "surgery" (§4).
Models: ``ek.exact.Gaussian1D`` (closed forms everywhere), ``ek.exact.LinearGaussian`` (pPCA; q is
the mean-field q(z|x) = N(posterior mean, diag of the posterior covariance), the linear VAE of
``vae_parameters``), ``ek.exact.GaussianMixture`` (discrete latent, q = the responsibilities or a
given ``q``), ``ek.VAE``, ``ek.HVAE``, ``ek.Diffusion``.

The lessons: :func:`naive_vs_importance` (p(x) = E_{p(z)} p(x|z) against importance sampling with
q, the spread over repeats as K grows), :func:`amortization_gap` (a per-example optimized q against
the encoder's, both against log p) and :func:`learned_prior` (the KL term under N(0, I), a fitted
mixture of Gaussians and the aggregate posterior as p(z)).
"""
from __future__ import annotations

from .closed_forms import diffusion_linear_closed_form, hvae_linear_closed_form
from .contexts import (DiffusionContext, EMContext, HVAEContext, LatentContext, MixtureContext,
                       SurgeryContext)
from .estimates import (LOG_2PI, MIN_ESS, RTOL32, RTOL64, STREAMS, Z_SIGMAS, Estimate, exact, log_mean,
                        mc)
from .lessons import (AmortizationResult, LearnedPriorResult, SamplingComparison, amortization_gap,
                      learned_prior, naive_vs_importance)
from .library import (DERIVATIONS, DIFFUSION, EM, GAP, HVAE_LEVELS, JENSEN, RECONSTRUCTION_KL, SURGERY,
                      Derivation, Step, get, names)
from .tracing import Row, TraceResult, trace

__all__ = ["Step", "Derivation", "Estimate", "TraceResult", "trace", "DERIVATIONS", "get", "names",
           "naive_vs_importance", "amortization_gap", "learned_prior"]
