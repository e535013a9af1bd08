"""elbokit: variational models bound by the evidence lower bound (ELBO), computed, trained and
explained by a verified C++ engine.

    import elbokit as ek
    train, test = ek.datasets.digits()
    vae = ek.VAE(x_dim=64, z_dim=8, hidden=(128, 128), likelihood="bernoulli", seed=0)
    hist = vae.fit(train, epochs=20, validation=test)
    vae.elbo(test, n_samples=10)            # every term, per example, with standard errors
    vae.log_likelihood(test, k=5000)        # importance-weighted bound L_K
"""


def _load_openblas():
    """Loads scipy-openblas32's library by path before the extension needs it (the extension also
    finds it through its RPATH when both packages sit in the same site-packages)."""
    import ctypes
    import os
    try:
        import scipy_openblas32
    except ImportError:  # an ELBOKIT_BLAS=OFF build does not need it
        return
    lib = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
    if os.path.isfile(lib):
        ctypes.CDLL(lib)


_load_openblas()
from . import _core, datasets, random  # noqa: E402
from .io import load
from .results import ElboResult, History, mean_stderr
from ._fit import DivergenceWarning, NonFiniteWarning
from .vae import VAE, NonFiniteResultError
from .hvae import HVAE, HElboResult
from .diffusion import Diffusion, DiffusionElbo
from . import distributed, estimators, exact, flows, kl
from .autoencoder import Autoencoder
from .flows import Flow
from .surgery import SurgeryResult, surgery
from . import derivations
from .derivations import trace

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Threads used by the engine. Results are bit-identical whatever the number."""
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.num_threads()


__all__ = ["VAE", "HVAE", "HElboResult", "Diffusion", "DiffusionElbo", "ElboResult", "History", "load", "datasets",
           "random", "mean_stderr", "set_num_threads", "get_num_threads", "__version__",
           "exact", "kl", "estimators", "surgery", "SurgeryResult", "flows", "Flow", "Autoencoder",
           "derivations", "trace", "distributed",
           "DivergenceWarning", "NonFiniteWarning", "NonFiniteResultError"]
