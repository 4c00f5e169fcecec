"""How weights travel, without Ray: buckets for a broadcast, numpy views for the object store.

A broadcast moves flat buffers: `plan_buckets` packs a state dict's tensors, in order and grouped by
dtype, into buckets of at most `bucket_bytes` (a tensor larger than that gets a bucket of its own),
so either side holds one bucket beyond its weights. The object store moves numpy arrays zero-copy
(Ray pickles them out of band): `to_numpy` views each tensor as an array without copying (bfloat16,
which numpy lacks, as int16 bits) and `from_numpy` turns the arrays a receiver gets back into
tensors, again without a copy, so the only copy on the receiving side is the one into its model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32,
                              torch.int16, torch.int8, torch.uint8, torch.bool)}
# numpy has no bfloat16: the bits travel as int16 and are viewed back
NUMPY_CARRIER = {torch.bfloat16: torch.int16}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    numel: int


@dataclass(frozen=True)
class Bucket:
    """Consecutive tensors of one dtype, broadcast as one flat buffer of `numel` elements."""

    dtype: str
    tensors: tuple[TensorSpec, ...]
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty(0, dtype=DTYPES[self.dtype]).element_size()


def plan_buckets(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[Bucket]:
    """The buckets of `state` (name -> tensor), in its order: each holds tensors of one dtype and at most
    `bucket_bytes`, except a single tensor larger than that."""
    buckets: list[Bucket] = []
    current: list[TensorSpec] = []
    dtype, size = None, 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and (str(t.dtype) != dtype or size + nbytes > bucket_bytes):
            buckets.append(Bucket(dtype, tuple(current), sum(s.numel for s in current)))
            current, size = [], 0
        dtype = str(t.dtype)
        current.append(TensorSpec(name, tuple(t.shape), t.numel()))
        size += nbytes
    if current:
        buckets.append(Bucket(dtype, tuple(current), sum(s.numel for s in current)))
    return buckets


def flatten(state: dict[str, torch.Tensor], bucket: Bucket) -> torch.Tensor:
    """The bucket's tensors of `state` as one flat buffer (numel,) on their device (one bucket of memory)."""
    return torch.cat([state[s.name].detach().reshape(-1) for s in bucket.tensors])


def unflatten(flat: torch.Tensor, bucket: Bucket) -> dict[str, torch.Tensor]:
    """Views of `flat` (numel,) shaped as the bucket's tensors: no copy."""
    out, offset = {}, 0
    for s in bucket.tensors:
        out[s.name] = flat[offset:offset + s.numel].view(s.shape)
        offset += s.numel
    return out


def to_numpy(state: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array viewing the tensor's CPU memory, name -> torch dtype). A tensor already on the CPU
    and contiguous is not copied; ray.put then writes each array into the object store once."""
    arrays, dtypes = {}, {}
    for name, t in state.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        dtypes[name] = str(t.dtype)
        carrier = NUMPY_CARRIER.get(t.dtype)
        arrays[name] = (t.view(carrier) if carrier is not None else t).numpy()
    return arrays, dtypes


def from_numpy(arrays: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, torch.Tensor]:
    """Tensors over the arrays' memory (read-only object-store memory is fine: they are only read)."""
    import warnings

    out = {}
    with warnings.catch_warnings():  # arrays from the object store are read-only; torch warns, we never write
        warnings.simplefilter("ignore", UserWarning)
        for name, a in arrays.items():
            t = torch.from_numpy(a)
            dtype = DTYPES[dtypes[name]]
            out[name] = t.view(dtype) if dtype in NUMPY_CARRIER else t
    return out
