"""Temporally correlated ("coloured") Gaussian noise for action sequences (iCEM, Pinneri et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor


def colored_noise(beta: float, shape: tuple[int, ...], generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Tensor:
    """Zero-mean, unit-variance noise with power spectrum 1/f^beta along the time axis.

    shape is [..., H, A] (H time steps). beta=0 is white noise; larger beta is smoother
    (2 is Brownian-like), with more of its variance in slow drifts and constant offsets.
    """
    *batch, horizon, act_dim = shape
    if beta == 0:
        return torch.randn(shape, generator=generator, device=device)
    freqs = torch.fft.rfftfreq(horizon, device=device)
    freqs[0] = freqs[1] if horizon > 1 else 1.0  # no infinite power at f = 0
    scale = freqs ** (-beta / 2)
    spectrum_shape = (*batch, act_dim, freqs.numel())
    real = torch.randn(spectrum_shape, generator=generator, device=device)
    imag = torch.randn(spectrum_shape, generator=generator, device=device)
    signal = torch.fft.irfft((real + 1j * imag) * scale, n=horizon)
    # exact std of irfft output: the DC (and Nyquist) bins count once, the others twice in amplitude
    weight = torch.full_like(scale, 4.0)
    weight[0] = 1.0
    if horizon % 2 == 0:
        weight[-1] = 1.0
    std = (weight * scale.square()).sum().sqrt() / horizon
    return (signal / std).transpose(-1, -2).contiguous()
