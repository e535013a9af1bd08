"""The Python side of training: option checks, the progress bar, and turning the engine's history
into a History (shared by every model)."""
from __future__ import annotations

import warnings

import numpy as np

from ._validation import check_choice, check_float, check_int
from .results import History

__all__ = ["fit_options", "optimizer_options", "run_fit", "DivergenceWarning", "NonFiniteWarning"]


class NonFiniteWarning(RuntimeWarning):
    """A number fit reports came out non-finite (a validation ELBO that overflows)."""


class DivergenceWarning(NonFiniteWarning):
    """fit stopped because the training loss or its gradient became non-finite."""


def optimizer_options(epochs, batch_size, lr, optimizer, seed, momentum, weight_decay, clip_norm) -> dict:
    """The training loop's and optimizer's options, checked (momentum only for sgd)."""
    opts = dict(
        epochs=check_int("epochs", epochs, 1),
        batch_size=check_int("batch_size", batch_size, 1),
        lr=check_float("lr", lr, positive=True),
        optimizer=check_choice("optimizer", optimizer, ("adam", "sgd")),
        seed=check_int("seed", seed, 0),
        momentum=check_float("momentum", momentum, minimum=0.0, maximum=0.999999),
        weight_decay=check_float("weight_decay", weight_decay, minimum=0.0),
        clip_norm=0.0 if clip_norm is None else check_float("clip_norm", clip_norm, positive=True),
    )
    if opts["optimizer"] == "adam":
        opts.pop("momentum")
    return opts


def fit_options(epochs, batch_size, lr, optimizer, beta, warmup_steps, free_bits, n_samples, kl, seed,
                momentum, weight_decay, clip_norm) -> dict:
    """optimizer_options plus the variational objective's (beta, KL warm-up, free bits, samples, KL)."""
    return dict(
        optimizer_options(epochs, batch_size, lr, optimizer, seed, momentum, weight_decay, clip_norm),
        beta=check_float("beta", beta, minimum=0.0),
        warmup_steps=check_int("warmup_steps", warmup_steps, 0),
        free_bits=check_float("free_bits", free_bits, minimum=0.0),
        n_samples=check_int("n_samples", n_samples, 1),
        kl=check_choice("kl", kl, ("analytic", "mc")),
    )


def run_fit(core, x, validation, options: dict, progress: bool, desc: str) -> History:
    """Runs core.fit with the GIL released; a tqdm bar follows it. A non-finite loss or gradient
    stops training with a DivergenceWarning naming the step: the parameters are those before the
    failing step (the last finite ones), and the History says where it stopped
    (``diverged`` True, ``diverged_at_step``, ``stopped_early``; ``step_loss`` holds the finite
    steps). A NaN validation ELBO (validation data that overflows the model) warns too."""
    bar = None
    callback = None
    if progress:
        from tqdm.auto import tqdm

        steps = options["epochs"] * -(-x.shape[0] // min(options["batch_size"], x.shape[0]))
        bar = tqdm(total=steps, desc=desc, unit="step", leave=True)

        def callback(epoch, epochs, step, total, loss, val_elbo, epoch_end):
            bar.update(step - bar.n)
            post = {"epoch": f"{epoch + 1}/{epochs}", "loss": f"{loss:.3f}"}
            if epoch_end and np.isfinite(val_elbo):
                post["val_elbo"] = f"{val_elbo:.3f}"
            bar.set_postfix(post, refresh=False)
            return True

    try:
        raw, error, step = core.fit(x, validation, options, callback)
    finally:
        if bar is not None:
            bar.close()
    hist = History(raw)
    hist["kl_terms"] = np.asarray(hist["kl_terms"], dtype=np.float64)
    hist["active_units"] = np.asarray(hist["active_units"], dtype=np.int64)
    hist["diverged"] = error is not None
    hist["diverged_at_step"] = None if error is None else int(step)
    if error is not None:
        hist["stopped_early"] = True
        hist["divergence"] = str(error)
        warnings.warn(DivergenceWarning(f"{desc}.fit stopped: {error}. The model keeps the last finite parameters; "
                                        f"History['diverged_at_step'] = {int(step)}"), stacklevel=3)
    bad = [k for k in ("val_elbo", "val_reconstruction", "val_kl") if np.isnan(hist.get(k, np.zeros(0))).any()]
    if bad:
        e = int(np.argmax(np.isnan(hist[bad[0]])))
        warnings.warn(NonFiniteWarning(f"{desc}.fit: {bad[0]} is NaN from epoch {e}: the model overflows on these "
                                       f"values of validation (check their scale)"), stacklevel=3)
    return hist
