"""Diffusion models (DDPM) as Markovian hierarchical VAEs with a fixed Gaussian encoder (MATH.md §7).

Steps are numbered t = 1 ... T as in the math; schedule arrays hold entry t - 1 for step t.
The denoising network is an MLP on concat(x_t, emb(t)) with a sinusoidal embedding of the integer
step t (width ``emb_dim``, half sines and half cosines of t * f_k, f_k = 10000^(-k/(half-1))),
parameters ``net.{i}.weight/bias`` and ``net.out.weight/bias`` as a PyTorch ModuleDict would name
them. It predicts epsilon, x0 or v; every prediction is the same model reparameterized and is
turned into eps_hat.

Noise (all from the engine's counter-based RNG, so results do not depend on the thread count):
training step s draws t_b = 1 + floor(T * uniform(seed, STREAMS['diffusion_time'] + s)[b]) and
eps (B, D) = normal(seed, STREAMS['train_noise'] + s); ``elbo(form="denoising")`` draws the eps
of (example b, step t) at flat index (b*T + t-1)*D + j of STREAMS['diffusion_elbo'];
``elbo(form="consistency")`` the forward chain's noise likewise from STREAMS['diffusion_chain'];
``sample`` draws x_T and the noise of sampling step k at (k*n + i)*D + j of STREAMS['sample'].
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _core
from . import io as _io
from ._fit import optimizer_options, run_fit
from ._validation import DTYPES, as_array, as_matrix, check_bool, check_choice, check_float, check_image_shape, check_int
from ._validation import MAX_ELEMENTS, check_count, check_num_params, check_widths, mlp_params  # noqa: F401
from .results import mean_stderr
from .vae import ACTIVATIONS, _check_nan, _ParamModel

__all__ = ["Diffusion", "DiffusionElbo", "SCHEDULES", "PREDICTIONS", "VARIANCES", "DATA_KINDS", "LOSSES"]

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "x0", "v")
VARIANCES = ("small", "large", "learned")
DATA_KINDS = ("continuous", "discrete256")
LOSSES = ("simple", "elbo", "hybrid")
FORMS = ("denoising", "consistency")
NETS = ("mlp", "unet")
HYBRID_LAMBDA = float(_core.HYBRID_LAMBDA)


class DiffusionElbo:
    """Per-example ELBO terms of a diffusion model in nats (MATH.md §7):
    ``elbo = reconstruction - prior - steps.sum(1)``.

    form "denoising" (B): ``steps[:, t-1] = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))`` for t >= 2
    (column 0 is 0: step 1 is the reconstruction), prior ``KL(q(x_T|x_0) || N(0, I))``.
    form "consistency" (A): ``steps[:, t-1] = E[log q(x_t|x_{t-1}) - log p(x_t|x_{t+1})]`` for
    t <= T-1 (column T-1 is 0: the top level is the prior term
    ``KL(q(x_T|x_{T-1}) || N(0, I))``), one forward chain per example.
    """

    def __init__(self, reconstruction, prior, steps, form, x_dim):
        self.reconstruction = np.asarray(reconstruction)
        self.prior = np.asarray(prior)
        self.steps = np.asarray(steps)
        self.form = form
        self.x_dim = x_dim
        self.elbo = self.reconstruction - self.prior - self.steps.sum(axis=1)

    def _term(self, term):
        check_choice("term", term, ("elbo", "reconstruction", "prior"))
        return getattr(self, term)

    def mean(self, term: str = "elbo") -> float:
        return float(np.mean(self._term(term)))

    def stderr(self, term: str = "elbo") -> float:
        """Standard error of the mean over examples (data spread and Monte-Carlo noise together)."""
        return mean_stderr(self._term(term))[1]

    def step_means(self) -> np.ndarray:
        """Mean over examples of each step's term (T,)."""
        return self.steps.mean(axis=0)

    def bits_per_dim(self) -> float:
        """-mean ELBO / (d ln 2): an honest negative log-likelihood bound in bits per dimension for
        data="discrete256" (a probability mass over 256 levels per dimension)."""
        return -self.mean() / (self.x_dim * math.log(2.0))

    def summary(self) -> dict:
        out = {t: mean_stderr(self._term(t)) for t in ("elbo", "reconstruction", "prior")}
        out["steps"] = mean_stderr(self.steps.sum(axis=1))
        return out

    def __repr__(self) -> str:
        rows = [f"{t:>15s}: {m:11.4f} ± {s:.4f}" for t, (m, s) in self.summary().items()]
        head = f"DiffusionElbo(n={self.elbo.shape[0]}, T={self.steps.shape[1]}, form={self.form!r}) [nats, mean ± s.e.]"
        return "\n".join([head] + rows + [f"{'bits/dim':>15s}: {self.bits_per_dim():11.4f}"])


# Most steps a schedule may have (its arrays are (T,) and elbo evaluates the network T times per
# example); DDPMs use 1000-4000.
MAX_TIMESTEPS = 10 ** 6


@_io.register
class Diffusion(_ParamModel):
    """A diffusion model p(x_0 ... x_T) with the fixed encoder q(x_t|x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I).

    Parameters
    ----------
    x_dim : data dimension D.
    timesteps : T (>= 2). None: 1000 for a named schedule, len(betas) for an array.
    schedule : "linear" (1e-4 ... 0.02 for T = 1000, both ends scaled by 1000/T otherwise, clipped
        at 0.999), "cosine" (s = 0.008, beta clipped at 0.999), or an array of T betas in (0, 1).
    hidden : widths of the network's hidden layers.
    prediction : "epsilon", "x0" or "v" (what the network outputs).
    variance : "small" (sigma_t^2 = posterior variance beta~_t; at t = 1, where beta~_1 = 0, beta~_2),
        "large" (sigma_t^2 = beta_t) or "learned" (improved DDPM, Nichol & Dhariwal 2021: the network
        has 2 * x_dim outputs, the prediction then v, and per example and dimension
        log sigma^2 = v log beta_t + (1 - v) log beta~_t, with v raw (not (v + 1)/2 as in their
        code) and beta~_1 clipped to beta~_2 as for "small"; train it with loss "hybrid" or "elbo").
    data : "continuous" (Gaussian p(x_0|x_1)) or "discrete256" (data on the 256 levels
        k*2/255 - 1 of [-1, 1]; discretized Gaussian p(x_0|x_1), honest bits/dim).
    emb_dim : width of the sinusoidal time embedding (even).
    activation : one of ACTIVATIONS (default "silu").
    dtype : "float32" or "float64". seed : initial weights (torch.nn.Linear's default init).
    """

    def __init__(self, x_dim: int | None = None, timesteps: int | None = None, schedule="linear",
                 hidden=(256, 256, 256), prediction: str = "epsilon", variance: str = "small",
                 data: str = "continuous", emb_dim: int = 32, activation: str = "silu", dtype: str = "float32",
                 seed: int = 0, net: str = "mlp", image_shape=None, channels=None, groups=None):
        check_choice("net", net, NETS)
        if net == "unet":
            image_shape = check_image_shape("image_shape", image_shape)
            D = int(np.prod(image_shape))
            if x_dim is not None and check_int("x_dim", x_dim, 1) != D:
                raise ValueError(f"x_dim must equal C·H·W = {D} for image_shape {image_shape}, got {x_dim}")
            x_dim = D
            channels = (32, 64) if channels is None else channels
            channels = check_widths("channels", channels, allow_empty=True)
            groups = check_int("groups", 8 if groups is None else groups, 1)
        else:
            for name, v in (("image_shape", image_shape), ("channels", channels), ("groups", groups)):
                if v is not None:
                    raise ValueError(f"{name} is an option of net='unet', got {name}={v!r} with net='mlp'")
            if x_dim is None:
                raise ValueError("x_dim must be a positive integer (the data dimension), got None")
        x_dim = check_int("x_dim", x_dim, 1)
        if isinstance(schedule, str):
            check_choice("schedule", schedule, SCHEDULES)
            T = 1000 if timesteps is None else check_int("timesteps", timesteps, 2, MAX_TIMESTEPS)
            betas = np.asarray(_core.schedule_betas(schedule, T))
            sched_cfg = schedule
        else:
            betas = as_array("schedule", schedule, np.float64, ndim=1)
            if betas.shape[0] < 2:
                raise ValueError(f"schedule must hold at least 2 betas, got {betas.shape[0]}")
            if not ((betas > 0) & (betas < 1)).all():
                i = int(np.argmax(~((betas > 0) & (betas < 1))))
                raise ValueError(f"schedule must hold betas in the open interval (0, 1), got {betas[i]} at step t = {i + 1}")
            if timesteps is not None and check_int("timesteps", timesteps, 2) != betas.shape[0]:
                raise ValueError(f"timesteps must equal len(schedule) = {betas.shape[0]} when betas are given, "
                                 f"got {timesteps}")
            T = betas.shape[0]
            sched_cfg = betas.tolist()
        hidden = check_widths("hidden", hidden)
        check_num_params("x_dim, emb_dim and hidden", mlp_params([x_dim + int(emb_dim) if isinstance(emb_dim, int) else x_dim,
                                                                  *hidden, x_dim]))
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("variance", variance, VARIANCES)
        check_choice("data", data, DATA_KINDS)
        emb_dim = check_int("emb_dim", emb_dim, 2)
        if emb_dim % 2:
            raise ValueError(f"emb_dim must be an even integer >= 2, got {emb_dim}")
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("dtype", dtype, tuple(DTYPES))
        seed = check_int("seed", seed, 0)
        self.config = dict(x_dim=x_dim, timesteps=T, schedule=sched_cfg, hidden=list(hidden), prediction=prediction,
                           variance=variance, data=data, emb_dim=emb_dim, activation=activation, dtype=dtype,
                           seed=seed)
        if net == "unet":
            self.config.update(net=net, image_shape=list(image_shape), channels=list(channels), groups=groups)
            spec = _core.NetSpec("unet", list(channels), activation, "channels", list(image_shape))
            spec.groups = groups
        else:
            spec = _core.NetSpec("mlp", list(hidden), activation, "hidden")
        self._np_dtype = DTYPES[dtype]
        cls = _core.Diffusion_f32 if dtype == "float32" else _core.Diffusion_f64
        self._core = cls(x_dim, betas.tolist(), spec, emb_dim, prediction, variance, data, seed)
        self._init_layout()
        s = self._core.schedule()
        self.betas = s["betas"]                       # (T,) beta_t, t = 1 ... T
        self.alphas = s["alphas"]                     # (T,) 1 - beta_t
        self.alphas_cumprod = s["alphas_cumprod"]     # (T,) alpha-bar_t
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])  # (T,) alpha-bar_{t-1}
        self.posterior_variance = s["posterior_variance"]  # (T,) beta~_t
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)  # (T,) SNR(t)
        # (T,) sigma_t^2 of p(x_{t-1}|x_t); None for "learned" (see p_mean_variance)
        self.sigmas2 = None if variance == "learned" else np.asarray(self._core.sigma2())
        for a in (self.betas, self.alphas, self.alphas_cumprod, self.alphas_cumprod_prev, self.posterior_variance,
                  self.snr, self.sigmas2):
            if a is not None:
                a.setflags(write=False)

    x_dim = property(lambda self: self.config["x_dim"])
    timesteps = property(lambda self: self.config["timesteps"])
    prediction = property(lambda self: self.config["prediction"])
    variance = property(lambda self: self.config["variance"])
    data = property(lambda self: self.config["data"])

    def __repr__(self) -> str:
        c = self.config
        sched = c["schedule"] if isinstance(c["schedule"], str) else "custom"
        net = (f"net='unet', image_shape={tuple(c['image_shape'])}, channels={tuple(c['channels'])}, "
               f"groups={c['groups']}" if c.get("net") == "unet" else f"hidden={tuple(c['hidden'])}")
        return (f"Diffusion(x_dim={c['x_dim']}, timesteps={c['timesteps']}, schedule={sched!r}, "
                f"{net}, prediction={c['prediction']!r}, variance={c['variance']!r}, "
                f"data={c['data']!r}, dtype={c['dtype']!r}) with {self.num_parameters} parameters")

    # -- inputs ---------------------------------------------------------------------------------
    def _x(self, x, name="x") -> np.ndarray:
        a = as_matrix(name, x, self.x_dim, self._np_dtype)
        if self.data == "discrete256":
            k = (a.astype(np.float64) + 1.0) * 127.5
            bad = (np.abs(k - np.round(k)) > 1e-3) | (a < -1) | (a > 1)
            if bad.any():
                i = tuple(int(v) for v in np.argwhere(bad)[0])
                raise ValueError(f"{name} must lie on the 256 levels k*2/255 - 1 of [-1, 1] for data='discrete256' "
                                 f"(for example 2*pixels/255 - 1), got {a[i]} at index {i}")
        return a

    def _t(self, t, n: int, name="t") -> list:
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            t = np.full(n, int(t))
        a = np.asarray(t)
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"{name} must be an integer or an array of shape ({n},), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer steps in 1 ... T = {self.timesteps}, got dtype {a.dtype}")
        bad = (a < 1) | (a > self.timesteps)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name} must hold steps in 1 ... T = {self.timesteps}, got {a[i]} at position {i}")
        return a.astype(np.int64).tolist()

    def _eps(self, eps, shape, name="eps") -> np.ndarray:
        return as_array(name, eps, self._np_dtype, ndim=2, shape=shape)

    # -- closed forms of the encoder (MATH.md §7) ----------------------------------------------
    def q_sample(self, x0, t, eps) -> np.ndarray:
        """x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps, per row (n, x_dim)."""
        x0 = as_matrix("x0", x0, self.x_dim, self._np_dtype)
        out = self._core.q_sample(x0, self._t(t, x0.shape[0]), self._eps(eps, x0.shape))
        _check_nan("q_sample", out, args="x0")
        return out

    def q_posterior(self, x0, xt, t):
        """(mean (n, x_dim), variance (n,)) of q(x_{t-1} | x_t, x_0)."""
        x0 = as_matrix("x0", x0, self.x_dim, self._np_dtype)
        xt = self._eps(xt, x0.shape, "xt")
        mean, var = self._core.q_posterior(x0, xt, self._t(t, x0.shape[0]))
        _check_nan("q_posterior", mean, var, args="x0 and xt")
        return mean, var

    def p_mean_variance(self, xt, t):
        """(mean (n, x_dim), variance) of p(x_{t-1} | x_t): variance (n,) for a fixed variance,
        (n, x_dim) for variance="learned" (one per example and dimension)."""
        xt = as_matrix("xt", xt, self.x_dim, self._np_dtype)
        mean, var, _, _ = self._core.p_mean_variance(xt, self._t(t, xt.shape[0]))
        _check_nan("p_mean_variance", mean, var, args="xt")
        return mean, var

    def predict(self, xt, t) -> dict:
        """The network's predictions at (x_t, t): {"eps": eps_hat, "x0": x0_hat} (n, x_dim)."""
        xt = as_matrix("xt", xt, self.x_dim, self._np_dtype)
        _, _, eps, x0 = self._core.p_mean_variance(xt, self._t(t, xt.shape[0]))
        _check_nan("predict", eps, x0, args="xt")
        return {"eps": eps, "x0": x0}

    # -- losses ---------------------------------------------------------------------------------
    def loss(self, x, t, eps, kind: str = "simple") -> np.ndarray:
        """Per-example loss (n,) at given steps t (n,) and noise eps (n, x_dim):
        "simple" ||eps - eps_hat(x_t, t)||^2; "elbo" prior KL + T * L_t, where L_t is the step KL
        (t >= 2) or -log p(x_0|x_1) (t = 1), an unbiased estimate of -ELBO for t ~ U{1..T};
        "hybrid" simple + HYBRID_LAMBDA * elbo.

        Gradients (loss_grad) of "hybrid": with variance="learned" the elbo term's gradient reaches
        only the variance output v (the mean mu_theta is held fixed in it, a stop-gradient as in
        Nichol & Dhariwal 2021), the prediction learns from "simple" alone; with a fixed variance
        it adds HYBRID_LAMBDA * d(elbo) through the mean, i.e. reweights ||eps - eps_hat||^2 at
        step t by 1 + HYBRID_LAMBDA * T * w_t (w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)))
        and, for "discrete256", adds the discretized t = 1 term. "simple" with "learned" gives v no
        gradient (allowed here, refused by fit)."""
        x = self._x(x)
        check_choice("kind", kind, LOSSES)
        out = self._core.loss(x, self._t(t, x.shape[0]), self._eps(eps, x.shape), kind)[0]
        _check_nan("loss", out)
        return out

    def loss_grad(self, x, t, eps, kind: str = "simple"):
        """(mean loss, grads): grads[name] is the gradient of the batch-mean loss by the
        hand-written backward pass."""
        x = self._x(x)
        check_choice("kind", kind, LOSSES)
        J, per, g = self._core.loss_grad(x, self._t(t, x.shape[0]), self._eps(eps, x.shape), kind)
        _check_nan("loss_grad", per, g)
        return J, self._grad_dict(g)

    # -- the bound ------------------------------------------------------------------------------
    def elbo(self, x, form: str = "denoising", seed: int = 0, distributed: bool = False) -> DiffusionElbo:
        """Per-example ELBO terms (nats) computed over all T steps (T network evaluations per
        example). form "denoising" (B): analytic prior and step KLs, one eps per (example, step);
        "consistency" (A): one Monte-Carlo forward chain per example. Both are unbiased for the
        same ELBO; B has far lower variance. Repeat rows of x to average more draws.
        distributed=True: the rows are sharded over the MPI processes (each keeps its noise) and
        gathered on every process."""
        x = self._x(x)
        check_choice("form", form, FORMS)
        seed = check_int("seed", seed, 0)
        if check_bool("distributed", distributed):
            from .distributed import sharded

            rec, prior, steps = sharded("Diffusion.elbo", x.shape[0], lambda lo, hi: tuple(
                np.asarray(a) for a in self._core.elbo(x[lo:hi], form, seed, lo)))
        else:
            rec, prior, steps = self._core.elbo(x, form, seed)
        _check_nan("elbo", rec, prior, steps)
        return DiffusionElbo(rec, prior, steps, form, self.x_dim)

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, n: int, method: str = "ddpm", steps: int | None = None, eta: float = 0.0, seed: int = 0,
               return_trajectory: bool = False):
        """n samples (n, x_dim). "ddpm": ancestral x_{t-1} = mu(x_t, t) + sigma_t z over all T steps
        (no noise at the last; sigma per dimension for variance="learned"); "ddim" (uses eps_hat
        only, so a learned variance is ignored): the subsequence tau_k = round(1 + k (T-1)/(steps-1)) of
        ``steps`` steps (default T), eta = 0 deterministic, eta = 1 the ancestral variance.
        With return_trajectory: (x, trajectory (S+1, n, x_dim) from x_T to x_0, steps visited (S+1,))."""
        n = check_count("n", n, self.x_dim * (1 if not return_trajectory else self.timesteps + 1))
        check_choice("method", method, ("ddpm", "ddim"))
        s = 0 if steps is None else check_int("steps", steps, 1)
        eta = check_float("eta", eta, minimum=0.0)
        seed = check_int("seed", seed, 0)
        x, traj, times = self._core.sample(n, method, s, eta, seed, bool(return_trajectory))
        _check_nan("sample", x)
        if not return_trajectory:
            return x
        return x, traj.reshape(-1, n, self.x_dim), np.asarray(times, dtype=np.int64)

    # -- training -------------------------------------------------------------------------------
    def fit(self, x, epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, loss: str | None = None,
            ema: float | None = None, validation=None, seed: int = 0, progress: bool = True,
            optimizer: str = "adam", momentum: float = 0.9, weight_decay: float = 0.0,
            clip_norm: float | None = None, distributed: bool = False, checkpoint=None):
        """Trains the network by minibatch descent on the loss ("simple", "elbo" or "hybrid",
        see ``loss``; default "simple", or "hybrid" for variance="learned", where "simple" raises
        ValueError: it would leave v untrained) with one step t ~ U{1..T} and one eps per example
        and step. With
        ema = d in [0, 1), an exponential moving average of the parameters is kept
        (ema <- d_k ema + (1 - d_k) theta, d_k = min(d, (1+k)/(10+k))) and the model ends with the
        EMA weights; ``hist['raw_parameters']`` holds the last iterate. History: ``train_loss``;
        ``train_elbo`` / ``val_elbo`` are unbiased one-step estimates of the ELBO (nats).

        ``checkpoint`` and ``distributed``: as in ``VAE.fit`` (a checkpoint at each epoch's end;
        data-parallel over MPI processes, see elbokit.distributed).
        """
        x = self._x(x)
        xv = None if validation is None else self._x(validation, "validation")
        if loss is None:
            loss = "hybrid" if self.variance == "learned" else "simple"
        check_choice("loss", loss, LOSSES)
        if loss == "simple" and self.variance == "learned":
            raise ValueError("loss must be 'hybrid' or 'elbo' for variance='learned' (with 'simple' the variance "
                             "output v gets no gradient), got 'simple'")
        d = 0.0 if ema is None else check_float("ema", ema, minimum=0.0)
        if d >= 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        opts = optimizer_options(epochs, batch_size, lr, optimizer, seed, momentum, weight_decay, clip_norm)
        core = self._core

        class _Bound:  # run_fit calls core.fit(x, validation, options, callback)
            get_flat = staticmethod(core.get_flat)

            @staticmethod
            def fit(x_, v_, o_, cb_, comm_=None):
                return core.fit(x_, v_, o_, cb_, loss, d, comm_)

        hist = run_fit(_Bound, x, xv, opts, progress, desc="Diffusion", distributed=distributed, checkpoint=checkpoint,
                       save=self.save)
        for k in ("kl_terms", "active_units"):
            hist.pop(k, None)
        if d > 0:
            flat = np.asarray(core.ema_flat())
            hist["raw_parameters"] = self._grad_dict(flat)
        return hist
