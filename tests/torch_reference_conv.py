"""A float64 PyTorch reference of elbokit's conv VAE (``ek.VAE(..., net="conv")``), for the
cross-check tests: plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` / ``nn.Linear`` layers whose
``state_dict()`` keys are elbokit's parameter names, the ELBO and objective of
:class:`torch_reference.TorchVAE` on top."""
import torch
from torch import nn

from torch_reference import ACTIVATIONS, DTYPE, TorchVAE, as_tensor
from torch_reference_hvae import GaussNet, TorchHVAE


class _ConvEncoder(nn.Module):
    """``0 … n-1``: Conv2d(c_{i-1}, c_i, 4, 2, 1); heads ``mu`` and ``logvar`` on the flattened features."""

    def __init__(self, image_shape, channels, z_dim, act=None):
        super().__init__()
        self.act, self.image_shape, self.n = act, tuple(image_shape), len(channels)
        C, H, W = image_shape
        prev = C
        for i, c in enumerate(channels):
            self.add_module(str(i), nn.Conv2d(prev, c, 4, stride=2, padding=1, dtype=DTYPE))
            prev = c
        f = 2 ** len(channels)
        feat = channels[-1] * (H // f) * (W // f)
        self.mu = nn.Linear(feat, z_dim, dtype=DTYPE)
        self.logvar = nn.Linear(feat, z_dim, dtype=DTYPE)
        self.out_dim = feat

    def forward(self, x):
        """x (..., C·H·W) -> (features (..., F), mu, logvar)."""
        lead = x.shape[:-1]
        h = x.reshape(-1, *self.image_shape)
        for i in range(self.n):
            h = self.act(getattr(self, str(i))(h))
        h = h.reshape(*lead, -1)
        return h, self.mu(h), self.logvar(h)


class _ConvDecoder(nn.Module):
    """``fc``: Linear(z, c_last·h·w); ``0 … n-2``: ConvTranspose2d over the channels reversed;
    ``out``: ConvTranspose2d to the image's channels; ``logvar`` (Gaussian, learned)."""

    def __init__(self, image_shape, channels, z_dim, learned_logvar, act=None):
        super().__init__()
        self.act, self.channels = act, tuple(channels)
        C, H, W = image_shape
        f = 2 ** len(channels)
        self.h, self.w = H // f, W // f
        rev = list(channels[::-1])
        self.fc = nn.Linear(z_dim, rev[0] * self.h * self.w, dtype=DTYPE)
        for j in range(len(rev) - 1):
            self.add_module(str(j), nn.ConvTranspose2d(rev[j], rev[j + 1], 4, stride=2, padding=1, dtype=DTYPE))
        self.out = nn.ConvTranspose2d(rev[-1], C, 4, stride=2, padding=1, dtype=DTYPE)
        if learned_logvar:
            self.logvar = nn.Parameter(torch.zeros(C * H * W, dtype=DTYPE))

    def forward(self, z):
        """z (..., Z) -> logits or means (..., C·H·W)."""
        lead = z.shape[:-1]
        h = self.act(self.fc(z.reshape(-1, z.shape[-1])))
        h = h.reshape(-1, self.channels[-1], self.h, self.w)
        for j in range(len(self.channels) - 1):
            h = self.act(getattr(self, str(j))(h))
        return self.out(h).reshape(*lead, -1)


class TorchConvVAE(TorchVAE):
    def __init__(self, image_shape, channels, z_dim, likelihood="bernoulli", activation="relu",
                 decoder_var="learned"):
        C, H, W = image_shape
        super().__init__(C * H * W, z_dim, (), likelihood, activation, decoder_var)
        self.image_shape, self.channels = tuple(image_shape), tuple(channels)
        learned = likelihood == "gaussian" and decoder_var == "learned"
        self.act = ACTIVATIONS[activation]
        self.encoder = _ConvEncoder(image_shape, channels, z_dim, self.act)
        self.decoder = _ConvDecoder(image_shape, channels, z_dim, learned, self.act)

    @classmethod
    def from_elbokit(cls, vae):
        c = vae.config
        model = cls(c["image_shape"], c["channels"], c["z_dim"], c["likelihood"], c["activation"],
                    c["decoder_var"])
        return model.load_elbokit_parameters(vae.parameters())

    def encode(self, x):
        _, mu, lv = self.encoder(as_tensor(x))
        return mu, lv

    def decode(self, z):
        return self.decoder(z)


class TorchConvHVAE(TorchHVAE):
    """torch_reference_hvae.TorchHVAE with level 0's networks convolutional: encoder.0 (q(z_1|x) or
    the bottom-up block 0) and decoder.0 (p(x|z_1)); the upper levels MLPs with `hidden`."""

    def __init__(self, image_shape, channels, z_dims, hidden=(), structure="markov", likelihood="bernoulli",
                 activation="relu", decoder_var="learned"):
        C, H, W = image_shape
        super().__init__(C * H * W, z_dims, hidden, structure, likelihood, activation, decoder_var)
        act = ACTIVATIONS[activation]
        learned = likelihood == "gaussian" and decoder_var == "learned"
        enc0 = _ConvEncoder(image_shape, channels, self.z_dims[0], act)
        dec0 = _ConvDecoder(image_shape, channels, self.z_dims[0], learned, act)
        if len(self.z_dims) == 1:
            self.encoder, self.decoder = enc0, dec0
        else:
            self.encoder[0], self.decoder[0] = enc0, dec0
            if structure == "topdown":  # the bottom-up block 1 reads block 0's conv features
                self.encoder[1] = GaussNet(enc0.out_dim, self.hidden, self.z_dims[1], act)
        self._enc[0], self._dec[0] = enc0, dec0
        if len(self.z_dims) > 1:
            self._enc[1] = self.encoder[1]

    @classmethod
    def from_elbokit(cls, hvae):
        c = hvae.config
        model = cls(c["image_shape"], c["channels"], c["z_dims"], c["hidden"], c["structure"], c["likelihood"],
                    c["activation"], c["decoder_var"])
        return model.load_elbokit_parameters(hvae.parameters())
