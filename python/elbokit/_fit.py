"""The Python side of training: option checks, the progress bar, and turning the engine's history
into a History (shared by every model)."""
from __future__ import annotations

import os
import warnings

import numpy as np

from ._validation import check_bool, check_choice, check_float, check_int
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


def run_fit(core, x, validation, options: dict, progress: bool, desc: str, distributed: bool = False,
            checkpoint=None, save=None) -> History:
    """Runs core.fit with the GIL released; a tqdm bar follows it. A non-finite loss or gradient
    stops training with a DivergenceWarning naming the step: the parameters are those before the
    failing step (the last finite ones), and the History says where it stopped
    (``diverged`` True, ``diverged_at_step``, ``stopped_early``; ``step_loss`` holds the finite
    steps). A NaN validation ELBO (validation data that overflows the model) warns too.

    checkpoint: a path that ``save(path)`` writes (atomically) at each epoch's end. distributed:
    data-parallel over the MPI processes (elbokit.distributed); process 0 alone shows the bar and
    writes the checkpoint, and a failure on one process ends the job on all of them."""
    distributed = check_bool("distributed", distributed)
    group = None
    if distributed:
        from .distributed import Group

        group = Group(f"{desc}.fit")
    root = group is None or group.rank == 0
    problem = None  # found on one process only (the checkpoint's folder): raised on all of them below
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        folder = os.path.dirname(os.path.abspath(checkpoint))
        if root and not os.path.isdir(folder):
            problem = f"checkpoint must be a path in an existing folder, got {checkpoint!r} ({folder} does not exist)"
            if group is None:
                raise ValueError(problem)
    if group is not None:
        n = x.shape[0]
        if min(options["batch_size"], n) < group.size:
            raise ValueError(f"batch_size must be at least the number of processes ({group.size}) in distributed "
                             f"training, got {min(options['batch_size'], n)} (batch_size {options['batch_size']}, "
                             f"{n} rows)")
        if options.get("free_bits", 0.0) > 0:
            raise ValueError("free_bits must be 0 in distributed training (the floor acts on the whole minibatch's "
                             f"mean KL, which no process has before the allreduce), got {options['free_bits']}")
        # every process must train the same run: same options, data and initial parameters
        get_flat = getattr(core, "get_flat", None)
        params = None if get_flat is None else np.asarray(get_flat(), dtype=np.float64)
        mine = (tuple(sorted((k, repr(v)) for k, v in options.items())), x.shape, str(x.dtype),
                repr(float(np.sum(x, dtype=np.float64))),
                None if validation is None else (validation.shape, repr(float(np.sum(validation, dtype=np.float64)))),
                None if params is None else (params.shape, repr(float(params.sum())), repr(float(params @ params))))
        what = ("options", "x's shape", "x's dtype", "x's sum", "validation", "the initial parameters")
        with group:
            theirs, problems = zip(*group.comm.allgather((mine, problem)))
        for p in problems:
            if p is not None:
                raise ValueError(p)
        for i, name in enumerate(what):
            if any(t[i] != mine[i] for t in theirs):
                raise ValueError(f"{name} must be the same on every process in distributed training (same data, "
                                 f"options and model seed), got {[t[i] for t in theirs]}")
    bar = None
    callback = None
    if progress and root:
        from tqdm.auto import tqdm

        steps = options["epochs"] * -(-x.shape[0] // min(options["batch_size"], x.shape[0]))
        bar = tqdm(total=steps, desc=desc, unit="step", leave=True)
    if bar is not None or (checkpoint is not None and root):
        def callback(epoch, epochs, step, total, loss, val_elbo, epoch_end):
            if bar is not None:
                bar.update(step - bar.n)
                post = {"epoch": f"{epoch + 1}/{epochs}", "loss": f"{loss:.3f}"}
                if epoch_end and np.isfinite(val_elbo):
                    post["val_elbo"] = f"{val_elbo:.3f}"
                bar.set_postfix(post, refresh=False)
            if epoch_end and checkpoint is not None:
                save(checkpoint)
            return True

    try:
        if group is None:
            raw, error, step = core.fit(x, validation, options, callback)
        else:
            with group:
                raw, error, step = core.fit(x, validation, options, callback, group.collective())
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
