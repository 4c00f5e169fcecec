"""How weights travel, without Ray: buckets for a broadcast, numpy views for the object store.

A broadcast moves flat buffers: `plan_buckets` packs a state dict's tensors, in order and grouped by
dtype, into buckets of at most `bucket_bytes`, cutting a tensor larger than that into pieces across
buckets, so either side needs one bucket of transport memory. The object store moves numpy arrays
zero-copy (Ray pickles them out of band): `to_numpy` views each tensor as an array without copying
(bfloat16, which numpy lacks, as int16 bits) and `from_numpy` turns the arrays a receiver gets back
into tensors, again without a copy, so the only copy on the receiving side is the one into its model.
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
class Piece:
    """Elements [start, start + numel) of tensor `name` (of `shape`), flattened."""

    name: str
    shape: tuple[int, ...]
    start: int
    numel: int


@dataclass(frozen=True)
class Bucket:
    """Pieces of tensors of one dtype, broadcast as one flat buffer of `numel` elements."""

    dtype: str
    pieces: tuple[Piece, ...]
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty(0, dtype=DTYPES[self.dtype]).element_size()

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {p.name: p.shape for p in self.pieces}


OWN_BUCKET_BYTES = 4 * 2**20  # a tensor this large travels in buckets of its own: no copy to pack it


def plan_buckets(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[Bucket]:
    """The buckets of `state` (name -> tensor), in its order: each holds one dtype and at most
    `bucket_bytes` (at least one element). Small tensors are packed together (one copy each, to save a
    broadcast call per tensor); a tensor of OWN_BUCKET_BYTES or more gets buckets of its own, cut into
    pieces when larger than a bucket, and such a piece is sent straight from the tensor's memory."""
    buckets: list[Bucket] = []
    pieces: list[Piece] = []
    dtype, used = None, 0

    def close():
        nonlocal pieces, used
        if pieces:
            buckets.append(Bucket(dtype, tuple(pieces), sum(p.numel for p in pieces)))
        pieces, used = [], 0

    for name, t in state.items():
        own = t.numel() * t.element_size() >= min(OWN_BUCKET_BYTES, bucket_bytes)
        if str(t.dtype) != dtype or own:
            close()
            dtype = str(t.dtype)
        capacity = max(1, bucket_bytes // t.element_size())
        start, total = 0, t.numel()
        while start < total or (total == 0 and start == 0):
            room = capacity - used
            if room <= 0:
                close()
                room = capacity
            take = min(room, total - start)
            pieces.append(Piece(name, tuple(t.shape), start, take))
            used += take
            start += take
            if total == 0:
                break
        if own:
            close()
    close()
    return buckets


def flatten(state: dict[str, torch.Tensor], bucket: Bucket, device=None) -> torch.Tensor:
    """The bucket's pieces of `state` as one flat buffer (numel,) on `device` (default: the tensors'): a view
    of the tensor itself for a one-piece bucket of a contiguous tensor already there, else one bucket of
    memory with each piece copied once."""
    first = state[bucket.pieces[0].name]
    device = torch.device(device) if device is not None else first.device
    if len(bucket.pieces) == 1 and first.is_contiguous() and first.device == device:
        p = bucket.pieces[0]
        return first.detach().reshape(-1)[p.start:p.start + p.numel]
    out = torch.empty(bucket.numel, dtype=first.dtype, device=device)
    offset = 0
    for p in bucket.pieces:
        out[offset:offset + p.numel].copy_(state[p.name].detach().reshape(-1)[p.start:p.start + p.numel])
        offset += p.numel
    return out


def unflatten(flat: torch.Tensor, bucket: Bucket) -> list[tuple[Piece, torch.Tensor]]:
    """(piece, view of `flat` holding it) for every piece of the bucket: no copy."""
    out, offset = [], 0
    for p in bucket.pieces:
        out.append((p, flat[offset:offset + p.numel]))
        offset += p.numel
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
