"""Training batches made on the training device: decode once, then warp and augment in torch.

The CPU pipeline (:mod:`landmarknet.data.dataset`) decodes a JPEG, warps it with OpenCV and
augments it for every sample of every epoch, in loader processes. With enough cores that keeps
up with an H200 (14 processes: 0.84-0.99 of the throughput on data already in GPU memory, see
docs/performance.md); with few cores it is the bottleneck. This module does the same work on
the device instead (0.78-0.88 of that throughput there, whatever the host's cores):

1. **Cache** (once, CPU threads): each sample's image is decoded and cut to a *context patch*,
   a ``P x P`` square around the face, the crop of :func:`~landmarknet.data.crop.face_crop`
   widened by :func:`context_factor` so that every crop the jitter can draw (scale, shift,
   rotation) lies inside it, resampled at ``oversample`` times the crop's resolution (so the
   second resampling below blurs little). Patches (uint8) and the points in patch pixels live
   on the device: ytf68's 3039 faces take about 0.75 GB at 112 px.
2. **Geometry** (per batch, vectorised): the same crop as :class:`SampleTransform.geometry`
   (points' box, policy, jitter, mirror) computed in patch coordinates as a batch of 2x3
   matrices; points are mapped with them (and re-ordered after a mirror), images resampled
   once with ``grid_sample`` (bilinear, zeros outside: OpenCV's constant border).
3. **Photometric** (per batch, vectorised): :func:`apply_photometric_batch` is
   :func:`~landmarknet.data.transforms.apply_photometric` for a batch (colour, per-sample
   Gaussian blur as a grouped separable convolution, occluding rectangle), rounding to uint8
   values at the end as the CPU path does.

Random draws come from a device generator seeded by ``(seed, batch position)``, and the batch
order is :class:`~landmarknet.data.dataset.ResumableBatchSampler`'s, so a resumed run sees
exactly the batches an uninterrupted one would. Draws differ from the CPU pipeline's (a
different generator), the distributions are the same. Samples that cannot be decoded are
reported once (in the first batch's ``"bad"`` list, which the trainer counts) and left out.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from landmarknet.data.crop import CropPolicy, face_crop
from landmarknet.data.dataset import ResumableBatchSampler
from landmarknet.data.formats import Sample
from landmarknet.data.transforms import Augment, SampleTransform, points_box, to_channels
from landmarknet.errors import DataError


def context_factor(a: Augment, margin: float = 0.05) -> float:
    """Patch side / nominal crop side so that any jittered, rotated crop stays inside."""
    big = 1.0 + max(0.0, a.scale)
    turn = math.radians(min(abs(a.rotate), 45.0))
    half = big / 2 * (math.cos(turn) + math.sin(turn)) + abs(a.shift) * big
    return 2 * half + margin


class PatchCache:
    """Context patches (N, C, P, P) uint8 and points (N, K, 2) in patch pixels, on ``device``."""

    def __init__(self, samples: Sequence[Sample], transform: SampleTransform,
                 device: torch.device | str = "cpu", *, oversample: float = 1.5,
                 threads: int = 8) -> None:
        self.policy = transform.policy
        self.channels = transform.channels
        self.context = context_factor(transform.augment)
        self.size = int(round(self.policy.size * self.context * oversample))
        cp = CropPolicy(self.size, self.policy.scale * self.context, self.policy.shift)

        def load(s: Sample):
            try:
                if not np.isfinite(s.points).all():
                    raise ValueError("points are not finite")
                image = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
                if image is None or image.size == 0:
                    raise ValueError("image cannot be decoded")
                g = face_crop(points_box(s.points), cp)
                patch = g.warp(to_channels(image, self.channels))
                if patch.ndim == 2:
                    patch = patch[:, :, None]
                return patch.transpose(2, 0, 1).copy(), g.to_crop(s.points).astype(np.float32)
            except Exception as exc:  # noqa: BLE001 - a bad file is reported, never fatal
                return f"{s.image_path}: {exc}"

        with ThreadPoolExecutor(max(1, threads)) as pool:
            loaded = list(pool.map(load, samples))
        good = [r for r in loaded if not isinstance(r, str)]
        self.bad = [r for r in loaded if isinstance(r, str)]
        if not good:
            raise DataError("no sample could be decoded: " + "; ".join(self.bad[:3]))
        self.index = [i for i, r in enumerate(loaded) if not isinstance(r, str)]
        self.device = torch.device(device)
        self.patches = torch.from_numpy(np.stack([g[0] for g in good])).to(self.device)
        self.points = torch.from_numpy(np.stack([g[1] for g in good])).to(self.device)

    def __len__(self) -> int:
        return len(self.index)


def crop_matrices(points: torch.Tensor, policy: CropPolicy, scale: torch.Tensor,
                  dx: torch.Tensor, dy: torch.Tensor, angle_deg: torch.Tensor,
                  flip: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) patch -> crop affines: :func:`face_crop` of the points' box with a jitter,
    then the mirror ``x -> size - 1 - x`` where ``flip``; all arguments are (B,) tensors."""
    lo, hi = points.amin(dim=1), points.amax(dim=1)
    extent = (hi - lo).amax(dim=1)
    side = policy.scale * extent * scale
    cx = (lo[:, 0] + hi[:, 0]) / 2 + (policy.shift[0] + dx) * side
    cy = (lo[:, 1] + hi[:, 1]) / 2 + (policy.shift[1] + dy) * side
    s = policy.size / side
    a = torch.deg2rad(angle_deg)
    ca, sa = torch.cos(a) * s, torch.sin(a) * s
    half = (policy.size - 1) / 2.0
    m = torch.stack([torch.stack([ca, sa, half - (ca * cx + sa * cy)], 1),
                     torch.stack([-sa, ca, half - (-sa * cx + ca * cy)], 1)], 1)
    mirrored = m.clone()
    mirrored[:, 0] = -m[:, 0]
    mirrored[:, 0, 2] += policy.size - 1
    return torch.where(flip[:, None, None], mirrored, m)


def warp_batch(patches: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Resample (B, C, P, P) patches into (B, C, size, size) crops under (B, 2, 3) affines
    (patch -> crop, pixel centres at integers), bilinear, zeros outside."""
    b, _, ph, pw = patches.shape
    full = torch.cat([matrices, matrices.new_tensor([0.0, 0.0, 1.0]).expand(b, 1, 3)], 1)
    inv = torch.linalg.inv(full)[:, :2]  # crop -> patch
    r = torch.arange(size, device=patches.device, dtype=matrices.dtype)
    v, u = torch.meshgrid(r, r, indexing="ij")
    uv1 = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3)  # (1, S*S, 3)
    src = uv1 @ inv.transpose(1, 2)  # (B, S*S, 2) patch pixels
    norm = torch.stack([(2 * src[..., 0] + 1) / pw - 1, (2 * src[..., 1] + 1) / ph - 1], -1)
    grid = norm.reshape(b, size, size, 2).to(torch.float32)
    return F.grid_sample(patches.float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _gaussian_taps(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 2r+1) normalised 1-D Gaussians; sigma 0 gives the identity tap."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-x ** 2 / (2 * s ** 2))
    return k / k.sum(dim=1, keepdim=True)


def apply_photometric_batch(crops: torch.Tensor, bright: torch.Tensor, contrast: torch.Tensor,
                            saturation: torch.Tensor, blur_sigma: torch.Tensor,
                            occ_rect: torch.Tensor, occ_on: torch.Tensor,
                            occ_color: torch.Tensor) -> torch.Tensor:
    """Batched :func:`~landmarknet.data.transforms.apply_photometric` on float (B, C, S, S).

    ``occ_rect`` (B, 4) is ``(x0, y0, w, h)`` in crop pixels; ``occ_color`` (B, 3). Returns
    values rounded and clipped to 0..255 (float), as the CPU path's uint8 crop.
    """
    out = crops
    b, c, h, w = out.shape
    if c == 3:
        gray = out.mean(dim=1, keepdim=True)
        out = gray + (out - gray) * (1 + saturation)[:, None, None, None]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * (1 + contrast)[:, None, None, None] + mean \
        + 64.0 * bright[:, None, None, None]
    if bool((blur_sigma > 0).any()):
        radius = 6  # OpenCV's kernel for sigma 1.5 has 13 taps
        taps = _gaussian_taps(blur_sigma, radius)
        taps = torch.where((blur_sigma > 0)[:, None], taps,
                           (torch.arange(2 * radius + 1, device=taps.device) == radius).float())
        k = taps.repeat_interleave(c, dim=0)  # (B*C, 2r+1)
        x = out.reshape(1, b * c, h, w)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :],
                     groups=b * c)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None],
                     groups=b * c)
        out = x.reshape(b, c, h, w)
    ys = torch.arange(h, device=out.device)[None, :, None]
    xs = torch.arange(w, device=out.device)[None, None, :]
    x0, y0, rw, rh = (occ_rect[:, i, None, None] for i in range(4))
    inside = (xs >= x0) & (xs < x0 + rw) & (ys >= y0) & (ys < y0 + rh) & occ_on[:, None, None]
    out = torch.where(inside[:, None], occ_color[:, :c, None, None].to(out.dtype), out)
    return torch.floor(out + 0.5).clamp_(0, 255)


class DeviceBatches:
    """An infinite, resumable iterator of training batches made on the cache's device.

    Yields the CPU loader's dicts: ``image`` (B, C, S, S) float (0..255 values), ``points``
    (B, K, 2) crop pixels, ``index`` (sample indices), ``bad`` (messages, first batch only).
    """

    def __init__(self, cache: PatchCache, augment: Augment, flip_perm: Sequence[int],
                 batch_size: int, *, seed: int = 0, start_batch: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        self.cache, self.augment = cache, augment
        self.flip_perm = torch.as_tensor(list(flip_perm), device=cache.device)
        self.sampler = ResumableBatchSampler(len(cache), batch_size, seed, start_batch, rank,
                                             world)
        self.seed, self.position = int(seed), int(start_batch)
        self.pending_bad = list(cache.bad)

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.cache.device)
        g.manual_seed((self.seed & 0xFFFFFFFF) * 1_000_003 + self.position * 7919 + 17)
        return g

    def make(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops and points of cache rows ``local`` (B,), drawing this position's randomness."""
        c, a = self.cache, self.augment
        b = len(local)
        g = self._generator()

        def uni(lo, hi, *shape):
            return torch.rand(b, *shape, generator=g, device=c.device) * (hi - lo) + lo

        pts = c.points[local]
        if a.active:
            scale, dx, dy = uni(1 - a.scale, 1 + a.scale), uni(-a.shift, a.shift), \
                uni(-a.shift, a.shift)
            angle, flip = uni(-a.rotate, a.rotate), uni(0, 1) < a.flip
        else:
            one = torch.ones(b, device=c.device)
            scale, dx, dy, angle = one, one * 0, one * 0, one * 0
            flip = one < 0
        m = crop_matrices(pts.double(), c.policy, scale.double(), dx.double(), dy.double(),
                          angle.double(), flip)
        crops = warp_batch(c.patches[local], m, c.policy.size)
        q = pts.double() @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
        q = torch.where(flip[:, None, None], q[:, self.flip_perm], q).float()
        if a.active:
            s = c.policy.size
            col = uni(-1, 1, 3) * a.color
            blur = torch.where(uni(0, 1) < a.blur, uni(0.5, 1.5), torch.zeros(b, device=c.device))
            occ_on = uni(0, 1) < a.occlusion
            wh = (uni(0.10, 0.35, 2) * s).floor()
            xy = (uni(0, 1, 2) * (s - wh)).floor()
            crops = apply_photometric_batch(crops, col[:, 0], col[:, 1], col[:, 2], blur,
                                            torch.cat([xy, wh], 1), occ_on, uni(0, 255, 3))
        else:
            crops = torch.floor(crops + 0.5).clamp_(0, 255)
        return crops, q

    def __iter__(self) -> Iterator[dict]:
        for batch in self.sampler:
            local = torch.as_tensor([i % len(self.cache) for i in batch], device=self.cache.device)
            crops, pts = self.make(local)
            self.position += 1
            bad, self.pending_bad = self.pending_bad, []
            yield {"image": crops, "points": pts,
                   "index": [self.cache.index[i % len(self.cache)] for i in batch], "bad": bad}
