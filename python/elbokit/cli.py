"""The ``elbokit`` command line.

    elbokit train vae --data digits --epochs 30 --out runs/vae   # train, evaluate, save
    elbokit train hvae --z-dims 8 4 --structure topdown          # a hierarchical VAE, every level's term
    elbokit demo                                                 # the README's main job
    elbokit info                                                 # version, threads, dtypes, MPI
    mpirun -n 4 elbokit train vae --distributed --out runs/vae   # data-parallel over 4 processes

``train MODEL`` fits a model on the training split with the test split as validation, then reports
on the held-out split: the ELBO and its terms (mean ± standard error, also in bits per dimension
for image data), the number of active latent units, and the importance-weighted log-likelihood
bound L_K (MATH.md §2-3). It writes ``model.elbokit`` (load it with ``elbokit.load``),
``report.png`` and ``metrics.json`` (every number printed) into ``--out``.

Adding a model is one function decorated with ``@model(name, help, arguments)`` that builds it
from the parsed options; training, evaluation and reporting are shared.

Exit codes: 0 success, 1 training diverged, 2 bad arguments (argparse's usage message, or one line
``elbokit: error: ...`` for a ValueError / FileNotFoundError raised by the package).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import textwrap
import time

import numpy as np

from . import __version__, datasets, get_num_threads, plots, set_num_threads
from ._atomic import atomic_write
from .results import mean_stderr
from .hvae import HVAE, STRUCTURES
from .vae import ACTIVATIONS, VAE

__all__ = ["main", "build_parser", "MODELS"]

PROG = "elbokit"
IMAGE_SHAPES = {"digits": (8, 8), "fashion_mnist": (28, 28)}  # other data sets are 2-D points
EVAL_SAMPLES = 10  # Monte-Carlo samples per example for the held-out ELBO


class UsageError(Exception):
    """A user mistake found after parsing; printed as one line, exit code 2."""


# -- argparse types -------------------------------------------------------------------------------
def _number(kind, minimum, strict: bool = False):
    """An argparse type: kind (int or float) >= minimum (> minimum when strict)."""
    what = ("an integer" if kind is int else "a number") + (" > " if strict else " >= ") + f"{minimum:g}"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (v > minimum if strict else v >= minimum) or (kind is float and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    parse.__name__ = "integer" if kind is int else "number"  # argparse names the type in some errors
    return parse


def _dataset_name(text: str) -> str:
    """A data set's name, hyphens read as underscores (fashion-mnist = fashion_mnist)."""
    return text.replace("-", "_")


_positive_int = _number(int, 1)
_count = _number(int, 0)
_positive_float = _number(float, 0.0, strict=True)
_nonnegative_float = _number(float, 0.0)


# -- models ---------------------------------------------------------------------------------------
MODELS: dict = {}  # name -> dict(build=function, help=str, arguments=list of (flags, kwargs))


def model(name: str, help: str, arguments=()):
    """Registers ``build(args, x_dim) -> model`` as ``elbokit train NAME``. ``arguments`` are the
    model's own options as (flags, argparse keyword arguments); the shared options (data,
    training, evaluation, output) are added for every model."""
    def register(build):
        MODELS[name] = dict(build=build, help=help, arguments=list(arguments))
        return build
    return register


@model("vae", help="variational autoencoder: Gaussian encoder, N(0, I) prior, Bernoulli or Gaussian decoder",
       arguments=[
           (("--z-dim",), dict(type=_positive_int, default=None, metavar="Z",
                               help="latent dimension (default 8 for images, 2 for 2-D data)")),
           (("--net",), dict(choices=("mlp", "conv"), default="mlp",
                             help="encoder and decoder: MLPs, or convolutional networks on images (default mlp)")),
           (("--hidden",), dict(type=_positive_int, nargs="*", default=None, metavar="H",
                                help="--net mlp: hidden layer widths of the encoder, reversed in the decoder "
                                     "(default 128 128)")),
           (("--channels",), dict(type=_positive_int, nargs="+", default=None, metavar="C",
                                  help="--net conv: channels per level, each a stride-2 4x4 conv (default 32 64)")),
           (("--likelihood",), dict(choices=("bernoulli", "gaussian"), default=None,
                                    help="decoder p(x|z) (default bernoulli for images, gaussian for 2-D data)")),
           (("--activation",), dict(choices=ACTIVATIONS, default="relu", help="hidden activation (default relu)")),
       ])
def build_vae(args, x_dim: int):
    """A VAE for data of dimension x_dim from the parsed options."""
    images = args.data in IMAGE_SHAPES
    z_dim = args.z_dim if args.z_dim is not None else (8 if images else 2)
    likelihood = args.likelihood or ("bernoulli" if images else "gaussian")
    if args.net == "conv":
        if not images:
            raise UsageError(f"--net conv needs image data ({', '.join(IMAGE_SHAPES)}), got --data {args.data}")
        if args.hidden is not None:
            raise UsageError("--hidden is an option of --net mlp; --net conv takes --channels")
        return VAE(x_dim, z_dim, net="conv", image_shape=(1, *IMAGE_SHAPES[args.data]),
                   channels=tuple(args.channels or (32, 64)), likelihood=likelihood, activation=args.activation,
                   dtype=args.dtype, seed=args.seed)
    if args.channels is not None:
        raise UsageError("--channels is an option of --net conv")
    hidden = (128, 128) if args.hidden is None else tuple(args.hidden)
    return VAE(x_dim, z_dim, hidden=hidden, likelihood=likelihood, activation=args.activation,
               dtype=args.dtype, seed=args.seed)


@model("hvae", help="hierarchical VAE with several Gaussian latent levels, Markov or top-down (ladder) encoder; "
                    "--free-bits acts per level",
       arguments=[
           (("--z-dims",), dict(type=_positive_int, nargs="+", default=None, metavar="Z",
                                help="latent widths bottom to top, one per level (default 8 4 for images, 2 2 for "
                                     "2-D data)")),
           (("--hidden",), dict(type=_positive_int, nargs="*", default=[128], metavar="H",
                                help="hidden layer widths of every network, reversed in the decoders (default 128)")),
           (("--structure",), dict(choices=STRUCTURES, default="markov",
                                   help="q(z_l|z_{l-1}) chain, or top-down with precision weighting (default markov)")),
           (("--likelihood",), dict(choices=("bernoulli", "gaussian"), default=None,
                                    help="decoder p(x|z_1) (default bernoulli for images, gaussian for 2-D data)")),
           (("--activation",), dict(choices=ACTIVATIONS, default="relu", help="hidden activation (default relu)")),
       ])
def build_hvae(args, x_dim: int):
    """An HVAE for data of dimension x_dim from the parsed options."""
    images = args.data in IMAGE_SHAPES
    z_dims = tuple(args.z_dims) if args.z_dims else ((8, 4) if images else (2, 2))
    likelihood = args.likelihood or ("bernoulli" if images else "gaussian")
    return HVAE(x_dim, z_dims, hidden=tuple(args.hidden), structure=args.structure, likelihood=likelihood,
                activation=args.activation, dtype=args.dtype, seed=args.seed)
@model("diffusion", help="diffusion model (DDPM) as a hierarchical VAE with a fixed Gaussian encoder",
       arguments=[
           (("--timesteps",), dict(type=_positive_int, default=1000, metavar="T", help="diffusion steps (default 1000)")),
           (("--schedule",), dict(choices=("linear", "cosine"), default="linear", help="noise schedule (default linear)")),
           (("--net",), dict(choices=("mlp", "unet"), default="mlp",
                             help="denoising network: an MLP on concat(x_t, emb(t)), or a U-Net on images (default mlp)")),
           (("--hidden",), dict(type=_positive_int, nargs="*", default=[256, 256, 256], metavar="H",
                                help="hidden widths of the denoising MLP (default 256 256 256)")),
           (("--channels",), dict(type=_positive_int, nargs="+", default=None, metavar="C",
                                  help="--net unet: channels per resolution (default 32 64)")),
           (("--groups",), dict(type=_positive_int, default=None,
                                help="--net unet: GroupNorm groups, dividing every channel count (default 8)")),
           (("--prediction",), dict(choices=("epsilon", "x0", "v"), default="epsilon", help="network output (default epsilon)")),
           (("--variance",), dict(choices=("small", "large"), default="large", help="decoder variance (default large)")),
           (("--loss",), dict(choices=("simple", "elbo", "hybrid"), default="simple", help="training loss (default simple)")),
           (("--ema",), dict(type=_nonnegative_float, default=0.999, help="EMA decay of the weights, 0 = off (default 0.999)")),
           (("--sample-steps",), dict(type=_positive_int, default=None, metavar="S",
                                      help="DDIM steps for the pictures (default: ancestral sampling over all T)")),
       ])
def build_diffusion(args, x_dim: int):  # noqa: D103
    """A diffusion model; fashion_mnist is modelled as 256-level data (honest bits/dim)."""
    from .diffusion import Diffusion

    data = "discrete256" if args.data == "fashion_mnist" else "continuous"
    net = {}
    if args.net == "unet":
        if args.data not in IMAGE_SHAPES:
            raise UsageError(f"--net unet needs image data ({', '.join(IMAGE_SHAPES)}), got --data {args.data}")
        net = dict(net="unet", image_shape=(1, *IMAGE_SHAPES[args.data]), channels=tuple(args.channels or (32, 64)),
                   groups=args.groups or 8)
    elif args.channels is not None or args.groups is not None:
        raise UsageError("--channels and --groups are options of --net unet")
    return Diffusion(x_dim, timesteps=args.timesteps, schedule=args.schedule, hidden=tuple(args.hidden),
                     prediction=args.prediction, variance=args.variance, data=data, dtype=args.dtype, seed=args.seed,
                     **net)


# -- the parser -----------------------------------------------------------------------------------
def _add_training_options(p: argparse.ArgumentParser, data_choices, default_out: str, epochs: int = 30) -> None:
    """Options shared by every model: data, training, evaluation, output."""
    g = p.add_argument_group("data and output")
    g.add_argument("--data", type=_dataset_name, choices=data_choices, default="digits",
                   help="data set (default digits; fashion-mnist and fashion_mnist are the same)")
    g.add_argument("--out", default=default_out, help=f"output folder, created if needed (default {default_out})")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_int, default=epochs,
                   help=f"passes over the training set (default {epochs})")
    g.add_argument("--batch-size", type=_positive_int, default=128, help="minibatch size (default 128)")
    g.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    g.add_argument("--beta", type=_nonnegative_float, default=1.0,
                   help="KL weight; the objective is a bound only at 1 (default 1)")
    g.add_argument("--warmup-steps", type=_count, default=0,
                   help="steps of linear KL warm-up from 0 to beta (default 0)")
    g.add_argument("--free-bits", type=_nonnegative_float, default=0.0,
                   help="free bits per latent dimension, nats (default 0)")
    g.add_argument("--n-samples", type=_positive_int, default=1, help="samples of z per example and step (default 1)")
    g.add_argument("--kl", choices=("analytic", "mc"), default="analytic", help="KL estimator (default analytic)")
    g.add_argument("--seed", type=_count, default=0, help="seed of weights, shuffling and noise (default 0)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision (default float32)")
    g.add_argument("--threads", type=_positive_int, default=None, help="engine threads (default: the engine's)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--checkpoint", action="store_true",
                   help="save the model to OUT/checkpoint.elbokit at each epoch's end (atomically)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of `mpirun -n R elbokit train ...` (needs mpi4py and an "
                        "MPI library): every process trains on its share of each minibatch, the held-out "
                        "evaluation is sharded, process 0 prints and writes the files")
    g = p.add_argument_group("evaluation")
    g.add_argument("--k", type=_positive_int, default=5000,
                   help="importance samples of the held-out log-likelihood bound L_K (default 5000); the cost "
                        "grows as K x held-out examples: on fashion_mnist (10000 of dimension 784) take 100-500")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``elbokit`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Variational models bound by the ELBO: train, evaluate, report.",
        epilog="Run 'elbokit COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train a model, evaluate it on held-out data, save it",
                                description="Train a model on a data set's training split, report the held-out "
                                            "ELBO terms and L_K, save model.elbokit, report.png, metrics.json.")
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)
    for name, spec in MODELS.items():
        m = models.add_parser(name, help=spec["help"], description=spec["help"])
        g = m.add_argument_group(f"{name} options")
        for flags, kwargs in spec["arguments"]:
            g.add_argument(*flags, **kwargs)
        _add_training_options(m, datasets.DATASETS, default_out=os.path.join("runs", name))
        m.set_defaults(handler=spec.get("handler", _train))

    demo = commands.add_parser("demo", help="train and evaluate a VAE on the bundled digits (under a minute)",
                               description="Trains a VAE 64-(128,128)-8 on 1500 bundled 8x8 digits with the 297 "
                                           "others as validation, then reports the held-out ELBO terms and L_5000.")
    demo.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder (default runs/demo)")
    demo.add_argument("--epochs", type=_positive_int, default=20, help="passes over the training set (default 20)")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    demo.set_defaults(handler=_demo)

    surg = commands.add_parser("surgery", help="ELBO surgery of a saved model: average KL = KL(q_agg || p) + I[x; z]",
                               description="Loads a model saved by 'elbokit train' (or model.save) and splits its "
                                           "held-out average KL to the prior into the marginal KL and the mutual "
                                           "information (MATH.md section 4), with standard errors.")
    surg.add_argument("model_file", metavar="MODEL", help="a saved model file (model.elbokit)")
    surg.add_argument("--data", type=_dataset_name, choices=datasets.DATASETS, default="digits", help="data set (default digits)")
    surg.add_argument("--n-samples", type=_positive_int, default=8, help="samples z ~ q(z|x) per point (default 8)")
    surg.add_argument("--seed", type=_count, default=0, help="seed of the samples (default 0)")
    surg.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to this JSON file")
    surg.set_defaults(handler=_surgery)

    tr = commands.add_parser("trace", help="trace a derivation line by line on a saved model (ek.trace)",
                             description="Evaluates every line of a derivation (ek.derivations) on a saved model "
                                         "and the first --n held-out points of --data: each line's value with its "
                                         "Monte-Carlo standard error, and whether each = or >= holds within 4 s.e. "
                                         "Exit code 0 when every relation holds, 1 when one fails or is "
                                         "undecided (too few effective samples).")
    tr.add_argument("derivation", metavar="DERIVATION", nargs="?", help="a derivation's name (see --list)")
    tr.add_argument("--list", action="store_true", help="list the derivations and the models each is traced on")
    tr.add_argument("--model", dest="model_file", metavar="FILE", help="a saved model file (model.elbokit)")
    tr.add_argument("--data", type=_dataset_name, choices=datasets.DATASETS, default="digits", help="data set (default digits)")
    tr.add_argument("--n", type=_positive_int, default=64, help="held-out points traced (default 64)")
    tr.add_argument("--n-samples", type=_positive_int, default=32, help="Monte-Carlo samples per point (default 32)")
    tr.add_argument("--seed", type=_count, default=0, help="seed of the samples (default 0)")
    tr.add_argument("--latex", default=None, metavar="PATH", help="also write the trace as LaTeX to this file")
    tr.set_defaults(handler=_trace)

    info = commands.add_parser("info", help="version, threads, supported dtypes, models and data sets")
    info.set_defaults(handler=_info)
    return parser


# -- commands -------------------------------------------------------------------------------------
def _demo(args) -> int:
    """The README's main job: `train vae` on the bundled digits with L_5000 on the 297 held out."""
    parser = build_parser()
    argv = ["train", "vae", "--data", "digits", "--z-dim", "8", "--hidden", "128", "128", "--epochs", str(args.epochs),
            "--batch-size", "32", "--lr", "2e-3",
            "--k", "5000", "--out", args.out] + ([] if args.progress else ["--no-progress"])
    print(f"elbokit demo: the same as `elbokit {' '.join(argv)}`")
    return _train(parser.parse_args(argv))


def _info(args) -> int:
    """What this installation offers."""
    from . import _core

    fm = os.environ.get("ELBOKIT_FASHION_MNIST") or datasets.DEFAULT_FASHION_MNIST_PATH
    rows = [
        ("elbokit", __version__),
        ("engine", os.path.basename(_core.__file__)),
        ("threads", str(get_num_threads())),
        ("vectors", _core.vector_isa()),
        ("products", _core.gemm_backend()),
        ("dtypes", "float32 (speed), float64 (verification)"),
        ("models", ", ".join(MODELS)),
        ("nets", _core.NET_KINDS.replace("'", "")),
        ("data sets", ", ".join(datasets.DATASETS)),
        ("fashion_mnist", f"{fm} ({'found' if os.path.isdir(fm) else 'not found'})"),
        ("mpi", _mpi_info()),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("numpy", np.__version__),
    ]
    for k, v in rows:
        print(f"{k:>14s}  {v}")
    return 0


def _mpi_info() -> str:
    """Whether --distributed can run here, and on which MPI."""
    from . import distributed

    if not distributed.available():
        return ("not available (--distributed needs mpi4py and an MPI library: pip install 'elbokit[mpi]', "
                "apt-get install openmpi-bin libopenmpi-dev)")
    import mpi4py

    return f"available: mpi4py {mpi4py.__version__}, {distributed.library()}; {distributed.size()} process(es) here"


def _surgery(args) -> int:
    """`surgery MODEL`: ek.surgery on the held-out split of --data (MATH.md §4)."""
    from .io import load
    from .surgery import surgery
    net = load(args.model_file)
    _, test = datasets.load(args.data)
    r = surgery(net, test, seed=args.seed, n_samples=args.n_samples)
    print(f"{type(net).__name__} from {args.model_file} on the {test.shape[0]} held-out points of {args.data}")
    print(r)
    if args.json:
        _write_json({k: getattr(r, k) for k in r.__dataclass_fields__}, args.json)
    return 0


def _trace(args) -> int:
    """`trace DERIVATION --model FILE`: ek.trace on the first --n held-out points of --data; exit 0
    when every relation holds, 1 when one fails or cannot be decided."""
    from . import derivations
    from .io import load
    if args.list:
        for d in derivations.DERIVATIONS.values():
            print(f"{d.name:>18s}  {d.title}  [models: {', '.join(d.models)}]")
        return 0
    if args.derivation is None or args.model_file is None:
        raise UsageError("trace needs DERIVATION and --model FILE (or --list)")
    d = derivations.get(args.derivation)
    net = load(args.model_file)
    _, test = datasets.load(args.data)
    if type(net).__name__ == "Diffusion" and args.data in IMAGE_SHAPES:
        test = 2 * test - 1  # as `train diffusion` scales images
    r = derivations.trace(d, net, test[:args.n], n_samples=args.n_samples, seed=args.seed)
    print(r)
    if args.latex:
        with atomic_write(args.latex, "w") as f:
            f.write(r.to_latex() + "\n")
    return 0 if r.relations_hold else 1


class _Quiet:
    """Process r > 0 of a distributed run prints nothing (process 0 speaks for the job)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            self._out, sys.stdout = sys.stdout, open(os.devnull, "w")
        return self

    def __exit__(self, *exc):
        if self.on:
            sys.stdout.close()
            sys.stdout = self._out


def _root(args) -> bool:
    """False on the processes r > 0 of a --distributed run."""
    if not args.distributed:
        return True
    from . import distributed

    if not distributed.available():
        raise UsageError("--distributed needs mpi4py and an MPI library: pip install 'elbokit[mpi]' and an MPI "
                         "implementation (Debian: apt-get install openmpi-bin libopenmpi-dev)")
    return distributed.rank() == 0


def _train(args) -> int:
    """Trains MODELS[args.model] on args.data, evaluates on the held-out split, saves and reports."""
    root = _root(args)
    with _Quiet(not root):
        return _train_run(args, root)


def _fit_files(args):
    """The checkpoint's path for --checkpoint (its folder created, on every process), else None."""
    if not args.checkpoint:
        return None
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, "checkpoint.elbokit")


def _train_run(args, root: bool) -> int:
    t_start = time.perf_counter()
    if args.threads is not None:
        set_num_threads(args.threads)
    train, test = datasets.load(args.data)
    image_shape = IMAGE_SHAPES.get(args.data)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out must be a folder, got {args.out!r}, which is a file")
    net = MODELS[args.model]["build"](args, train.shape[1])
    print(f"{args.model} on {args.data}: {train.shape[0]} training and {test.shape[0]} held-out examples of "
          f"dimension {train.shape[1]}")
    print(net)
    if args.beta != 1.0 or args.warmup_steps > 0 or args.free_bits > 0:
        print("note: with beta != 1, KL warm-up or free bits the training objective is not a bound; "
              "the ELBO reported is the true one")
    sys.stdout.flush()

    # 1. Train, with the held-out split as validation.
    t0 = time.perf_counter()
    checkpoint = _fit_files(args)
    try:
        hist = net.fit(train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=args.beta,
                       warmup_steps=args.warmup_steps, free_bits=args.free_bits, n_samples=args.n_samples,
                       kl=args.kl, validation=test, seed=args.seed, progress=args.progress,
                       distributed=args.distributed, checkpoint=checkpoint)
    except FloatingPointError as e:
        print(f"{PROG}: error: training diverged: {e}; try a smaller --lr", file=sys.stderr)
        return 1
    if hist.get("diverged"):
        print(f"{PROG}: error: training diverged: {hist['divergence']}; try a smaller --lr", file=sys.stderr)
        return 1
    t_train = time.perf_counter() - t0

    # 2. Evaluate on the held-out split (MATH.md §2-3).
    t0 = time.perf_counter()
    res = net.elbo(test, n_samples=EVAL_SAMPLES, seed=args.seed, distributed=args.distributed)
    ll = net.log_likelihood(test, k=args.k, seed=args.seed, distributed=args.distributed)
    t_eval = time.perf_counter() - t0
    if not root:  # process 0 writes the files
        return 0
    metrics = _metrics(args, net, hist, res, ll, train, test, image_shape)

    # 3. Save the model, the figure and the numbers.
    os.makedirs(args.out, exist_ok=True)
    paths = {name: os.path.join(args.out, name) for name in ("model.elbokit", "report.png", "metrics.json")}
    net.save(paths["model.elbokit"])
    title = f"{net!r}\ntrained {args.epochs} epochs on {args.data}; held-out ELBO {res.mean():.3f} nats"
    fig = plots.vae_report_figure(net, test, hist, image_shape=image_shape, seed=args.seed, title=title)
    plots.save_figure(fig, paths["report.png"])
    plots.close(fig)
    metrics["time_s"] = {"train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t_start}
    metrics["files"] = paths
    _write_json(metrics, paths["metrics.json"])
    print(_table(metrics))
    print("saved " + ", ".join(paths.values()))
    return 0


def _train_diffusion(args) -> int:
    """`train diffusion`: fit, the held-out denoising ELBO over all T steps (and bits/dim), samples
    and trajectories in report.png, model.elbokit, metrics.json."""
    root = _root(args)
    with _Quiet(not root):
        return _train_diffusion_run(args, root)


def _train_diffusion_run(args, root: bool) -> int:
    t_start = time.perf_counter()
    if args.threads is not None:
        set_num_threads(args.threads)
    if args.beta != 1.0 or args.warmup_steps > 0 or args.free_bits > 0 or args.n_samples != 1 or args.kl != "analytic":
        raise UsageError("--beta, --warmup-steps, --free-bits, --n-samples and --kl are VAE options; "
                         "a diffusion model takes none of them")
    train, test = datasets.load(args.data)
    image_shape = IMAGE_SHAPES.get(args.data)
    if image_shape is not None:  # images in [0, 1] -> [-1, 1] (fashion_mnist: exactly the 256 levels)
        train, test = 2 * train - 1, 2 * test - 1
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out must be a folder, got {args.out!r}, which is a file")
    net = MODELS["diffusion"]["build"](args, train.shape[1])
    print(f"diffusion on {args.data}: {train.shape[0]} training and {test.shape[0]} held-out examples of "
          f"dimension {train.shape[1]}")
    print(net)
    sys.stdout.flush()
    t0 = time.perf_counter()
    checkpoint = _fit_files(args)
    try:
        hist = net.fit(train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=args.loss,
                       ema=args.ema if args.ema > 0 else None, validation=test, seed=args.seed,
                       progress=args.progress, distributed=args.distributed, checkpoint=checkpoint)
    except FloatingPointError as e:
        print(f"{PROG}: error: training diverged: {e}; try a smaller --lr", file=sys.stderr)
        return 1
    if hist.get("diverged"):
        print(f"{PROG}: error: training diverged: {hist['divergence']}; try a smaller --lr", file=sys.stderr)
        return 1
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = test[:1000] if image_shape is None else test[:200]  # T network evaluations per example
    res = net.elbo(held, form="denoising", seed=args.seed, distributed=args.distributed)
    t_eval = time.perf_counter() - t0
    if not root:  # process 0 samples and writes the files
        return 0
    method = "ddpm" if args.sample_steps is None else "ddim"
    n = 2000 if image_shape is None else 20
    samples, traj, steps = net.sample(n, method=method, steps=args.sample_steps, seed=args.seed,
                                      return_trajectory=True)
    os.makedirs(args.out, exist_ok=True)
    paths = {name: os.path.join(args.out, name) for name in ("model.elbokit", "report.png", "metrics.json")}
    net.save(paths["model.elbokit"])
    plt = plots._pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    if image_shape is None:
        ax[0].scatter(*test[:n].T, s=2)
        ax[0].set_title(f"held-out {args.data}")
        ax[1].scatter(*samples.T, s=2)
        for i in range(min(40, n)):
            ax[2].plot(traj[:, i, 0], traj[:, i, 1], lw=0.5)
        ax[2].set_title(f"trajectories x_T -> x_0 ({method})")
    else:
        plots.plot_images((test[:20] + 1) / 2, shape=image_shape, ax=ax[0], title="held-out", vmin=0, vmax=1)
        plots.plot_images((np.clip(samples, -1, 1) + 1) / 2, shape=image_shape, ax=ax[1], vmin=0, vmax=1)
        idx = np.linspace(0, len(steps) - 1, 10).round().astype(int)
        plots.plot_images((np.clip(traj[idx, 0], -1, 1) + 1) / 2, shape=image_shape, ax=ax[2], vmin=0, vmax=1,
                          title="one trajectory, x_T -> x_0")
    ax[1].set_title(f"samples ({method}, {len(steps) - 1} steps)")
    fig.suptitle(textwrap.fill(repr(net), 110) + f"\nheld-out ELBO {res.mean():.3f} ± {res.stderr():.3f} nats, {res.bits_per_dim():.3f} bits/dim")
    plots.save_figure(fig, paths["report.png"])
    plots.close(fig)
    rec, prior = mean_stderr(res.reconstruction), mean_stderr(res.prior)
    metrics = {"model": "diffusion", "data": args.data, "config": net.config,
               "held_out": {"n": int(held.shape[0]), "elbo": mean_stderr(res.elbo), "reconstruction": rec,
                            "prior": prior, "bits_per_dim": res.bits_per_dim(),
                            "step_means": res.step_means().tolist()},
               "train_loss": list(map(float, hist.train_loss)),
               "time_s": {"train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t_start},
               "files": paths}
    _write_json(metrics, paths["metrics.json"])
    print(res)
    print("saved " + ", ".join(paths.values()))
    return 0


MODELS["diffusion"]["handler"] = _train_diffusion


def _metrics(args, net, hist, res, ll, train, test, image_shape) -> dict:
    """Every number the table prints, and what produced them."""
    d = train.shape[1]
    ll_mean, ll_se = mean_stderr(ll)
    terms = {t: dict(zip(("mean", "stderr"), v)) for t, v in res.summary().items()}
    units = net.active_units(test) if hasattr(net, "active_units") else np.asarray(hist["active_units"])[-1]
    held_out = {**terms, "log_likelihood": {"mean": ll_mean, "stderr": ll_se, "k": args.k},
                "active_units": int(np.sum(units)), "z_dim": int(sum(net.z_dims) if hasattr(net, "z_dims") else net.z_dim),
                "n_examples": int(test.shape[0]), "n_samples": EVAL_SAMPLES, "seed": args.seed}
    if hasattr(res, "kl_levels"):  # a hierarchical model: every level's term and active units
        held_out["kl_levels"] = res.level_means().tolist()
        held_out["active_units_per_level"] = [int(u) for u in np.atleast_1d(units)]
        held_out["z_dims"] = list(net.z_dims)
    else:
        held_out["kl_per_dim"] = np.mean(res.kl_per_dim, axis=0).tolist()
    if image_shape is not None:
        # Positive costs in bits per dimension: -ELBO, -reconstruction, KL and -L_K over d ln 2.
        scale = 1.0 / (d * math.log(2.0))
        held_out["bits_per_dim"] = {
            "elbo": {"mean": -terms["elbo"]["mean"] * scale, "stderr": terms["elbo"]["stderr"] * scale},
            "reconstruction": {"mean": -terms["reconstruction"]["mean"] * scale,
                               "stderr": terms["reconstruction"]["stderr"] * scale},
            "kl": {"mean": terms["kl"]["mean"] * scale, "stderr": terms["kl"]["stderr"] * scale},
            "log_likelihood": {"mean": -ll_mean * scale, "stderr": ll_se * scale},
        }
    last = {k: float(np.asarray(hist[k])[-1]) for k in ("train_loss", "train_elbo", "val_elbo") if len(hist[k])}
    return {
        "elbokit_version": __version__,
        "model": args.model,
        "config": net.config,
        "num_parameters": int(net.num_parameters),
        "data": {"name": args.data, "n_train": int(train.shape[0]), "n_test": int(test.shape[0]), "x_dim": int(d),
                 "image_shape": list(image_shape) if image_shape else None},
        "training": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "beta", "warmup_steps",
                                                   "free_bits", "n_samples", "kl", "seed")},
        "last_epoch": last,
        "held_out": held_out,
    }


def _pm(mean: float, se: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _table(m: dict) -> str:
    """The held-out report as aligned text."""
    h = m["held_out"]
    bits = h.get("bits_per_dim")
    rows = [
        (f"ELBO ({h['n_samples']} samples)", h["elbo"], bits and bits["elbo"]),
        ("  reconstruction E_q[log p(x|z)]", h["reconstruction"], bits and bits["reconstruction"]),
        ("  KL(q(z|x) || p(z))", h["kl"], bits and bits["kl"]),
        *((f"    level {l}: " + ("prior matching" if l == len(h["kl_levels"]) else
                                  "consistency" if m["config"].get("structure") == "markov" else "KL to p(z_l|z_l+1)"),
           h[f"kl_{l}"], None) for l in range(1, len(h.get("kl_levels", ())) + 1)),
        (f"log-likelihood L_{h['log_likelihood']['k']}", h["log_likelihood"], bits and bits["log_likelihood"]),
    ]
    head = f"held-out {m['data']['name']}: {h['n_examples']} examples, mean ± standard error"
    lines = ["", head, f"  {'':34s}{'nats':>20s}" + (f"{'bits/dim':>20s}" if bits else "")]
    for label, v, b in rows:
        line = f"  {label:34s}{_pm(v['mean'], v['stderr'], 3):>20s}"
        if b:
            line += f"{_pm(b['mean'], b['stderr'], 4):>20s}"
        lines.append(line)
    lines.append(f"  {'active units (Var_x E_q[z_j] > 0.01)':34s}{h['active_units']:>14d} / {h['z_dim']}")
    if "active_units_per_level" in h:
        per = ", ".join(f"{u}/{z}" for u, z in zip(h["active_units_per_level"], h["z_dims"]))
        lines.append(f"  {'  per level, bottom to top':34s}{per:>20s}")
    if bits:
        lines.append("  bits/dim: -ELBO, -reconstruction, KL and -L_K divided by d ln 2 (lower is better)")
    t = m["time_s"]
    lines.append(f"time: training {t['train']:.1f} s, evaluation {t['evaluate']:.1f} s, total {t['total']:.1f} s")
    return "\n".join(lines)


def _finite_or_none(obj):
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _write_json(obj, path: str) -> None:
    """Writes obj as JSON atomically."""
    with atomic_write(path, "w", suffix=".json") as f:
        json.dump(_finite_or_none(obj), f, indent=2, allow_nan=False)
        f.write("\n")


# -- entry point ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    """Runs the command line with ``argv`` and returns the exit code; never raises SystemExit, so
    it can be called from tests and notebooks. Without ``argv`` (the console script) it reads
    ``sys.argv[1:]`` and draws with matplotlib's non-interactive Agg backend."""
    if argv is None:
        plots.use_agg()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (argparse printed it)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, UsageError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
