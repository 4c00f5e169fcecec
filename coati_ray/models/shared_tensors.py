"""Tensors handed to another process on the same node by reference, not through the object store (no Ray here).

    blob = share(state)            # in the sender: a few bytes per tensor (where its memory is), for ONE receiver
    state = open_shared(blob)      # in the receiver: tensors mapping the sender's memory (copy them, then drop)

torch's multiprocessing reductions do the work, through the pickler they register them with
(`ForkingPickler`; Ray's own pickler would copy the data): a CPU tensor's storage is moved into a
shared-memory file once (the "file_system" strategy: any process on the node can open it by name; the
tensor keeps working in place, and later shares of it cost nothing), a CUDA tensor is handed over as a
CUDA IPC handle. Each blob holds one reference for one receiver, taken back when that receiver opens it:
make one blob per receiver. The receiver must copy what it needs while the sender leaves the tensors
alone (the weight sync only uses this between steps in sync mode).

torch never removes those files itself (not when the sender exits, not when it is killed): the sender lists
them (`shared_files`) and unlinks them when it is done (`unlink_shared`); its own mappings stay valid until it
exits, and the memory goes back then.
"""

from __future__ import annotations

import io
import pickle

import torch


def share(state: dict[str, torch.Tensor]) -> bytes:
    """name -> tensor as a blob one other process on this node can open (`open_shared`)."""
    import torch.multiprocessing as tmp
    from multiprocessing.reduction import ForkingPickler

    if tmp.get_sharing_strategy() != "file_system":  # opened by name from any process, not passed as an fd
        tmp.set_sharing_strategy("file_system")
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump({name: t.detach() for name, t in state.items()})
    return buf.getvalue()


def shared_files(state: dict[str, torch.Tensor]) -> set[str]:
    """The /dev/shm files behind the CPU tensors of `state` that `share` moved into shared memory."""
    names = set()
    for t in state.values():
        if t.device.type == "cpu" and t.is_shared():
            names.add(t.untyped_storage()._share_filename_cpu_()[1].decode().lstrip("/"))
    return names


def unlink_shared(names: set[str]) -> int:
    """Remove the named shared-memory files (those already gone are skipped); the bytes freed once unmapped."""
    import os

    freed = 0
    for name in names:
        path = os.path.join("/dev/shm", name)
        try:
            freed += os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            pass
    return freed


def open_shared(blob: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a `share` blob, mapping the sender's memory."""
    import torch.multiprocessing  # noqa: F401 (registers the reductions the blob was written with)

    return pickle.loads(blob)


def state_nbytes(blob_state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in blob_state.values())
