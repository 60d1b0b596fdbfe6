"""Winograd F(4x4, 3x3): weight transform and the 3x3 stride-1 convolution (a ``tune`` kernel)."""
from __future__ import annotations

import math
import threading
from typing import Sequence

import torch
import torch.nn.functional as F

# Winograd F(4x4, 3x3) (Lavin & Gray 2016; points 0, +-1, +-2, inf), in float64.
_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                   dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                  dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
_WINO_M = 4  # output tile
_WINO_A = 6  # input tile


_KBT = torch.kron(_BT, _BT)  # (36, 36): B^T d B of a 6x6 tile as one product
_KAT = torch.kron(_AT, _AT)  # (16, 36): A^T m A


def winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> U (36, C, K): ``G g G^T`` of each filter, index ``xi * 6 + nu``."""
    k, c = weight.shape[:2]
    u = torch.einsum("xi,kcij,yj->xyck", _G, weight.detach().double().cpu(), _G)
    return u.reshape(_WINO_A * _WINO_A, c, k).to(weight.dtype).contiguous()


class _Scratch(threading.local):
    """Per-thread scratch buffers shared by all Winograd layers (they run one after another):
    large temporaries are allocated once instead of per call (fresh pages cost a page fault
    each, and glibc returns big blocks to the system between calls)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, slot: str, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        key = (slot, like.dtype, like.device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):  # usable both inside and outside inference mode
                buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self.buffers[key] = buf
        return buf[:n].view(*shape)


_SCRATCH = _Scratch()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None,
                     pad: tuple[int, int], relu: bool) -> torch.Tensor:
    """3x3 stride-1 convolution of (N, C, H, W) by Winograd F(4x4, 3x3); channels_last out.

    The 6x6 input tiles (stride 4; channels contiguous) are gathered as (36, tiles x C) and
    transformed by one (36 x 36) product ``kron(B^T, B^T)``, multiplied by the pre-transformed
    weights ``u`` as 36 batched (tiles x C) @ (C x K) products (4x fewer multiply-adds than
    the direct 3x3 convolution), and transformed back by one (16 x 36) product to 4x4 outputs.
    """
    m, a = _WINO_M, _WINO_A
    n, c, h, w = x.shape
    k = u.shape[2]
    ph, pw = pad
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-ho // m), -(-wo // m)
    hp, wp = th * m + 2, tw * m + 2
    p = n * th * tw
    xh = x.permute(0, 2, 3, 1)  # NHWC view (a copy only when x is not channels_last)
    xp = F.pad(xh, (0, 0, pw, wp - w - pw, ph, hp - h - ph)).contiguous()
    tiles = xp.as_strided((a, a, n, th, tw, c),
                          (wp * c, c, hp * wp * c, m * wp * c, m * c, 1))
    gathered = _SCRATCH.get("tiles", (a, a, n, th, tw, c), x)
    gathered.copy_(tiles)
    v = _SCRATCH.get("v", (a * a, p * c), x)
    torch.matmul(_KBT.to(x.dtype), gathered.view(a * a, p * c), out=v)   # (36, P*C)
    prod = _SCRATCH.get("prod", (a * a, p, k), x)
    torch.bmm(v.view(a * a, p, c), u, out=prod)                           # (36, P, K)
    y = _SCRATCH.get("y", (m * m, p * k), x)
    torch.matmul(_KAT.to(x.dtype), prod.view(a * a, p * k), out=y)       # (16, P*K): (r, s)
    y = y.view(m, m, n, th, tw, k).permute(2, 3, 0, 4, 1, 5)             # (N, i, r, j, s, K)
    out = torch.empty((n, ho, wo, k), dtype=x.dtype, device=x.device)
    if (ho, wo) == (th * m, tw * m):  # whole tiles: (N, i, r, j, s, K) is out's own order
        dst = out.view(n, th, m, tw, m, k)
    else:
        y = y.reshape(n, th * m, tw * m, k)[:, :ho, :wo]
        dst = out
    if bias is not None:
        torch.add(y, bias, out=dst)
    else:
        dst.copy_(y)
    if relu:
        out.relu_()
    return out.permute(0, 3, 1, 2)
