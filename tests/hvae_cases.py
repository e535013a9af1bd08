"""Small hierarchical VAEs with perturbed parameters, their data and noise, shared by the HVAE tests."""
import numpy as np

import elbokit as ek

# structure, z_dims, hidden, activation, likelihood, decoder_var, kl, S: both structures, 2-3 levels,
# both likelihoods, both KL estimators, empty and deep trunks.
CASES = [
    dict(structure="markov", z_dims=(3, 2), hidden=(6,), activation="tanh", likelihood="bernoulli",
         decoder_var="learned", kl="analytic", S=2),
    dict(structure="markov", z_dims=(3, 2, 2), hidden=(5, 4), activation="softplus", likelihood="gaussian",
         decoder_var="learned", kl="mc", S=1),
    dict(structure="markov", z_dims=(2, 3, 1), hidden=(), activation="relu", likelihood="gaussian",
         decoder_var=0.5, kl="analytic", S=3),
    dict(structure="topdown", z_dims=(3, 2), hidden=(6,), activation="tanh", likelihood="bernoulli",
         decoder_var="learned", kl="analytic", S=2),
    dict(structure="topdown", z_dims=(3, 2, 2), hidden=(5, 4), activation="silu", likelihood="gaussian",
         decoder_var="learned", kl="analytic", S=1),
    dict(structure="topdown", z_dims=(2, 3, 1), hidden=(), activation="elu", likelihood="bernoulli",
         decoder_var="learned", kl="mc", S=3),
    dict(structure="topdown", z_dims=(4, 2), hidden=(5,), activation="sigmoid", likelihood="gaussian",
         decoder_var="learned", kl="mc", S=2),
]


def case_id(c):
    return (f"{c['structure']}-z{''.join(map(str, c['z_dims']))}-h{list(c['hidden'])}-{c['activation']}-"
            f"{c['likelihood']}-{c['kl']}-S{c['S']}")


def config(case):
    return {k: case[k] for k in ("z_dims", "hidden", "structure", "activation", "likelihood", "decoder_var")}


def build(case, x_dim=6, n=5, dtype="float64", seed=0):
    """(hvae, x, eps): parameters get N(0, 0.2^2) noise on top of the init (biases and the decoder
    log-variance away from special values); the log-variance heads' weights are scaled by 0.3 so that
    no sampled latent gets an extreme prior precision (which would only make finite differences
    ill-conditioned)."""
    rng = np.random.default_rng(seed + 101)
    h = ek.HVAE(x_dim, dtype=dtype, seed=seed, **config(case))
    params = {k: v + 0.2 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in h.parameters().items()}
    params = {k: 0.3 * v if k.endswith("logvar.weight") else v for k, v in params.items()}
    h.set_parameters(params)
    x = rng.uniform(0.0, 1.0, (n, x_dim)) if case["likelihood"] == "bernoulli" else rng.standard_normal((n, x_dim))
    eps = [rng.standard_normal((case["S"], n, z)) for z in case["z_dims"]]
    return h, x, eps
