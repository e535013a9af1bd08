"""A PyTorch reference of elbokit's U-Net (cpp/include/elbokit/unet.hpp), written the plain PyTorch
way from the description (nn.Conv2d, nn.GroupNorm, nn.Linear, autograd), independently of the
engine; its state_dict keys are elbokit's parameter names under the prefix "net.".

    x (B, C, H, W), emb (B, E)
    temb = time.1(act(time.0(emb)))                                     (B, 4·c_0)
    h = conv_in(x)                                                        (B, c_0, H, W)
    down i = 0 … n−1: h = down.i.res(h, temb); skip_i = h;
                      h = down.i.down(h) (3×3, stride 2) unless i = n−1
    h = mid(h, temb)
    up i = n−1 … 0:   h = up.i.res(cat(h, skip_i), temb);
                      h = up.i.up(nearest×2(h)) (3×3 conv to c_{i−1}) unless i = 0
    out = out(silu(norm_out(h)))                                         (B, C_out, H, W)
    res(x, temb) = conv2(silu(norm2(conv1(silu(norm1(x))) + temb_proj(silu(temb))[:, :, None, None])))
                   + (x or skip(x), a 1×1 conv when the channels change)
"""
import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim, groups, act=F.silu):
        super().__init__()
        self.act = act
        self.norm1 = nn.GroupNorm(groups, cin, dtype=DTYPE)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, dtype=DTYPE)
        self.temb = nn.Linear(tdim, cout, dtype=DTYPE)
        self.norm2 = nn.GroupNorm(groups, cout, dtype=DTYPE)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, dtype=DTYPE)
        self.skip = nn.Conv2d(cin, cout, 1, dtype=DTYPE) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.temb(self.act(temb))[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class Level(nn.Module):
    pass


class TorchUNet(nn.Module):
    def __init__(self, image_shape, channels, emb_dim, groups=8, out_channels=None, act=F.silu):
        super().__init__()
        self.act = act
        C, self.H, self.W = image_shape
        self.C = C
        ch = list(channels)
        n = len(ch)
        tdim = 4 * ch[0]
        self.time = nn.ModuleDict({"0": nn.Linear(emb_dim, tdim, dtype=DTYPE), "1": nn.Linear(tdim, tdim, dtype=DTYPE)})
        self.conv_in = nn.Conv2d(C, ch[0], 3, padding=1, dtype=DTYPE)
        self.down = nn.ModuleDict()
        prev = ch[0]
        for i in range(n):
            lv = Level()
            lv.res = ResBlock(prev, ch[i], tdim, groups, act)
            if i < n - 1:
                lv.down = nn.Conv2d(ch[i], ch[i], 3, stride=2, padding=1, dtype=DTYPE)
            self.down[str(i)] = lv
            prev = ch[i]
        self.mid = ResBlock(prev, prev, tdim, groups, act)
        self.up = nn.ModuleDict()
        for i in reversed(range(n)):
            lv = Level()
            lv.res = ResBlock(prev + ch[i], ch[i], tdim, groups, act)
            prev = ch[i]
            if i > 0:
                lv.up = nn.Conv2d(ch[i], ch[i - 1], 3, padding=1, dtype=DTYPE)
                prev = ch[i - 1]
            self.up[str(i)] = lv
        self.norm_out = nn.GroupNorm(groups, prev, dtype=DTYPE)
        self.out = nn.Conv2d(prev, out_channels or C, 3, padding=1, dtype=DTYPE)
        self.n = n

    def forward(self, x, emb):
        """x (B, C·H·W) rows, emb (B, E) -> (B, C_out·H·W) rows, as the engine's rows."""
        B = x.shape[0]
        x = x.reshape(B, self.C, self.H, self.W)
        temb = self.time["1"](self.act(self.time["0"](emb)))
        h = self.conv_in(x)
        skips = []
        for i in range(self.n):
            lv = self.down[str(i)]
            h = lv.res(h, temb)
            skips.append(h)
            if i < self.n - 1:
                h = lv.down(h)
        h = self.mid(h, temb)
        for i in reversed(range(self.n)):
            lv = self.up[str(i)]
            h = lv.res(torch.cat([h, skips[i]], 1), temb)
            if i > 0:
                h = lv.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        out = self.out(self.act(self.norm_out(h)))
        return out.reshape(B, -1)
