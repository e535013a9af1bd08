"""A fit whose loss becomes non-finite (SGD at a learning rate of 1e3) stops with a
DivergenceWarning naming the step, keeps the last finite weights, and its History records where it
stopped; for every model."""
import numpy as np
import pytest

import elbokit as ek

rng = np.random.default_rng(0)
CASES = {
    "VAE": (lambda: ek.VAE(6, 2, hidden=(8,), likelihood="gaussian", seed=0), rng.normal(size=(64, 6)) * 3, {}),
    "HVAE": (lambda: ek.HVAE(6, (3, 2), hidden=(8,), likelihood="gaussian", structure="topdown", seed=0),
             rng.normal(size=(64, 6)) * 3, {}),
    "Diffusion": (lambda: ek.Diffusion(2, timesteps=10, hidden=(8,), emb_dim=4, seed=0), rng.normal(size=(64, 2)),
                  {"ema": 0.9}),
    "Flow": (lambda: ek.Flow(2, hidden=(8,), seed=0), rng.normal(size=(64, 2)) * 3, {}),
    "Autoencoder": (lambda: ek.Autoencoder(6, 2, hidden=(8,), seed=0), rng.normal(size=(64, 6)) * 3, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_divergence_stops_with_a_warning_and_the_last_finite_weights(name):
    make, x, extra = CASES[name]
    model = make()
    p0 = model.parameters()
    with pytest.warns(ek.DivergenceWarning, match=r"training diverged at step (\d+)") as rec:
        hist = model.fit(x, epochs=50, batch_size=16, lr=1e3, optimizer="sgd", momentum=0.0, progress=False, **extra)
    step = hist["diverged_at_step"]
    assert hist["diverged"] and hist["stopped_early"] and isinstance(step, int)
    assert f"at step {step} " in str(rec[0].message) and f"diverged_at_step'] = {step}" in str(rec[0].message)
    assert step == hist["steps"] == len(hist["step_loss"]) < 50 * 4
    assert np.isfinite(hist["step_loss"]).all()
    p = model.parameters()
    assert all(np.isfinite(a).all() for a in p.values())
    if step == 0:
        assert all(np.array_equal(p[k], p0[k]) for k in p)
    else:  # the weights before the failing step: replaying the finite steps gives them exactly
        again = make()
        with pytest.warns(ek.DivergenceWarning):
            again.fit(x, epochs=50, batch_size=16, lr=1e3, optimizer="sgd", momentum=0.0, progress=False, **extra)
        assert all(np.array_equal(again.parameters()[k], p[k]) for k in p)
    # evaluating the kept (finite, but huge) weights gives finite numbers or says that it overflows
    try:
        out = model.sample(3, seed=0) if name != "Autoencoder" else model.reconstruct(x[:3])
    except ek.NonFiniteResultError:
        return
    assert out.shape[0] == 3 and not np.isnan(out).any()


def test_a_finite_fit_records_no_divergence():
    vae = ek.VAE(6, 2, hidden=(8,), seed=0)
    hist = vae.fit(rng.uniform(size=(32, 6)), epochs=2, batch_size=16, progress=False)
    assert hist["diverged"] is False and hist["diverged_at_step"] is None and not hist["stopped_early"]
