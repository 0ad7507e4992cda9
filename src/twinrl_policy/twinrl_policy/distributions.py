"""Tanh-squashed diagonal Gaussian: the policy's action distribution.

``u ~ N(mean, std)``, ``y = tanh(u)`` in (-1, 1)^D. Log-probabilities include the change of
variables: ``log p(y) = log N(u) - sum log(1 - tanh(u)^2)``, computed in the stable form
``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``. Targets on the boundary (a gripper
command of exactly +-1) are pulled inside by ``boundary_eps`` (0.02: atanh(0.98) = 2.3) before ``atanh``; a
larger eps keeps the imitation targets of a binary gripper reachable in a few hundred steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["TanhGaussian"]

_LOG2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class TanhGaussian:
    """Batch of tanh-squashed Gaussians over the last dimension."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor, boundary_eps: float = 2e-2):
        self.mean = mean
        self.log_std = log_std
        self.std = log_std.exp()
        self.boundary_eps = float(boundary_eps)

    @staticmethod
    def _log_tanh_jacobian(u: torch.Tensor) -> torch.Tensor:
        return 2.0 * (_LOG2 - u - F.softplus(-2.0 * u))

    def _gaussian_log_prob_dims(self, u: torch.Tensor) -> torch.Tensor:
        z = (u - self.mean) / self.std
        return -0.5 * z.pow(2) - self.log_std - _LOG_SQRT_2PI

    def log_prob_pre_tanh(self, u: torch.Tensor) -> torch.Tensor:
        """log p(tanh(u)) for pre-squash values u (exact; use with :meth:`rsample`)."""
        return (self._gaussian_log_prob_dims(u) - self._log_tanh_jacobian(u)).sum(-1)

    def log_prob_dims(self, y: torch.Tensor) -> torch.Tensor:
        """Per-dimension terms of :meth:`log_prob` (shape (..., D); they sum to it): the
        dimensions are independent, so each has its own log-density."""
        lim = 1.0 - self.boundary_eps
        u = torch.atanh(y.clamp(-lim, lim))
        return self._gaussian_log_prob_dims(u) - self._log_tanh_jacobian(u)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) for squashed values y in [-1, 1] (shape (..., D) -> (...))."""
        return self.log_prob_dims(y).sum(-1)

    def rsample(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample: (y, log p(y)); gradients flow to mean and log_std."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=self.mean.device)
        u = self.mean + self.std * noise
        return torch.tanh(u), self.log_prob_pre_tanh(u)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(generator)[0]

    def mode(self) -> torch.Tensor:
        """Deterministic action: tanh(mean)."""
        return torch.tanh(self.mean)

    def entropy_estimate(self, samples: int = 1) -> torch.Tensor:
        """Monte-Carlo estimate of the entropy (no closed form after the squash)."""
        total = 0.0
        for _ in range(samples):
            total = total - self.rsample()[1]
        return total / samples
