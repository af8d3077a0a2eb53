"""Normalizers for observations and actions: a per-dimension affine map, on numpy arrays or torch tensors.

Both kinds compute `(x - offset) / scale` over the last dimension (any leading dimensions), so a
normalizer fitted on the dataset can be applied unchanged to a batch on the GPU or to one raw
observation from the environment. Their `state_dict()` holds only plain lists and the kind, so it
goes into checkpoints that load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import numpy as np
import torch

from diffuser.errors import DatasetError

# A dimension whose spread is below this is constant in the data: it gets scale 1 instead, so it
# maps to 0 and a value that differs from it at evaluation is not blown up by a division by ~0.
MIN_SCALE = 1e-6

OBSERVATION_NORMALIZERS = ("gaussian", "minmax")


def _safe_scale(scale) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64)
    return np.where(scale < MIN_SCALE, 1.0, scale)


class _AffineNormalizer:
    kind: str

    def __init__(self, offset, scale):
        self._offset = np.asarray(offset, dtype=np.float32)
        self._scale = np.asarray(scale, dtype=np.float32)
        self.dim = self._offset.shape[-1]
        self._tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def normalize(self, x):
        x, offset, scale = self._prepare(x)
        return (x - offset) / scale

    def unnormalize(self, x):
        x, offset, scale = self._prepare(x)
        return x * scale + offset

    def _prepare(self, x):
        """x as a floating array or tensor, and (offset, scale) of the same type, dtype and device."""
        if isinstance(x, torch.Tensor):
            if not x.is_floating_point():
                x = x.float()
            key = (x.device, x.dtype)
            if key not in self._tensors:
                self._tensors[key] = (
                    torch.as_tensor(self._offset, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self._scale, dtype=x.dtype, device=x.device),
                )
            offset, scale = self._tensors[key]
        else:
            x = np.asarray(x)
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            offset, scale = self._offset, self._scale
        if x.shape[-1:] != (self.dim,):
            raise ValueError(
                f"{type(self).__name__} works on {self.dim}-dimensional values but got shape {tuple(x.shape)}; "
                "pass values whose last dimension matches the dataset's."
            )
        return x, offset, scale

    @classmethod
    def from_state_dict(cls, state: dict):
        normalizer = normalizer_from_state_dict(state)
        if not isinstance(normalizer, cls):
            raise ValueError(f"Normalizer state of kind {state['kind']!r} cannot build a {cls.__name__}.")
        return normalizer


class GaussianNormalizer(_AffineNormalizer):
    """z-score: (x - mean) / std; dimensions with std below MIN_SCALE use std 1."""

    kind = "gaussian"

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = _safe_scale(std)
        super().__init__(self.mean, self.std)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}


class MinMaxNormalizer(_AffineNormalizer):
    """[low, high] -> [-1, 1]; dimensions with high - low below MIN_SCALE are centred and not scaled."""

    kind = "minmax"

    def __init__(self, low, high):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        super().__init__((self.low + self.high) / 2.0, _safe_scale((self.high - self.low) / 2.0))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "low": self.low.tolist(), "high": self.high.tolist()}


def normalizer_from_state_dict(state: dict) -> GaussianNormalizer | MinMaxNormalizer:
    kind = state.get("kind")
    if kind == GaussianNormalizer.kind:
        return GaussianNormalizer(state["mean"], state["std"])
    if kind == MinMaxNormalizer.kind:
        return MinMaxNormalizer(state["low"], state["high"])
    raise ValueError(
        f"Normalizer state has kind {kind!r}; expected 'gaussian' or 'minmax' (was it written by this package?)."
    )


def _stat(metadata: dict, key: str, field: str) -> np.ndarray:
    try:
        return np.asarray(metadata["stats"][key][field], dtype=np.float64)
    except (KeyError, TypeError) as error:
        raise DatasetError(
            f"Dataset metadata of '{metadata.get('name', '?')}' lacks stats.{key}.{field}; "
            "re-run `python -m diffuser prepare` for it."
        ) from error


def _action_bounds(metadata: dict) -> tuple[np.ndarray, np.ndarray]:
    """action_low/action_high; an unbounded dimension falls back to the data's min/max of that action."""
    name = metadata.get("name", "?")
    try:
        low = np.asarray(metadata["action_low"], dtype=np.float64)
        high = np.asarray(metadata["action_high"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(
            f"Dataset metadata of '{name}' lacks numeric action_low/action_high; re-run `python -m diffuser prepare` for it."
        ) from error
    unbounded = ~(np.isfinite(low) & np.isfinite(high))
    if unbounded.any():
        low = np.where(unbounded, _stat(metadata, "actions", "min"), low)
        high = np.where(unbounded, _stat(metadata, "actions", "max"), high)
    return low, high


def make_normalizers(metadata: dict, kind: str) -> dict:
    """{"observations": kind fitted to the stats, "actions": min-max from the action bounds}."""
    if kind == "gaussian":
        observations = GaussianNormalizer(
            _stat(metadata, "observations", "mean"), _stat(metadata, "observations", "std")
        )
    elif kind == "minmax":
        observations = MinMaxNormalizer(
            _stat(metadata, "observations", "min"), _stat(metadata, "observations", "max")
        )
    else:
        raise ValueError(
            f"Unknown normalizer {kind!r} (config key `normalizer`); use one of {', '.join(OBSERVATION_NORMALIZERS)}."
        )
    return {"observations": observations, "actions": MinMaxNormalizer(*_action_bounds(metadata))}
