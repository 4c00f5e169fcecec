"""Weight transports (`weight_sync.transport`): how a version of the trainers' weights reaches the makers.

One file per transport, each registered by name; `weight_sync.transport: module:Class` names one of your own
(docs/extending.md):

  object_store.py  each trainer group's rank 0 puts its weights once per version; makers load the handle
  collective.py    one torch.distributed group per role: rank 0 broadcasts bucket by bucket into the makers
  ipc.py           (sync mode) makers on rank 0's node map its tensors (shared memory / CUDA IPC)

The job's WeightSync (actors/weight_sync.py) holds the transports it may use, picks among them (`auto`), falls
back to the object store where one cannot serve a maker, and reports; MakerLoads (loads.py) sends the handles to
the makers, coalesced. A transport is built with the job's WeightSync (`cfg`, `trainers`, `pool`, `info`, the
newest `version`, `rank0()` / `each_role()` to call the trainer ranks) and has:

    publish(version) -> Published | None   after each update: push `version` to the makers now and say which
                                           received it; None: nothing pushed (the object store carries it)
    handle_for(index, wait) -> dict | None what maker `index` loads to hold the newest version, {"version",
                                           "bytes", "roles": {role: part}}; None: not this transport's to serve
                                           (the object store's handle then); `wait` False: mid-step, never block
    close()                                release what publish set up (groups, ...)

`lazy = True` marks a transport whose makers pull per maker (handle_for) instead of a push; WeightSync then
counts the bytes it reports in `mapped`. Raising TransportDown (it cannot serve this job) or TransportBroke
(this version failed, e.g. a member died) from publish or handle_for lets WeightSync fall back.

The maker side of a handle is a reader registered for each part's `kind` (`@register_reader`): part ->
{name: tensor}, run inside the maker by WeightReceiver.load, which copies the tensors into its model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

from coati_ray.seams import TRANSPORTS  # the one registry of transport names (Ray-free, so the config knows them)

READERS: dict[str, Callable[[dict], dict]] = {}


def register_transport(name: str):
    """Class decorator: `weight_sync.transport: <name>` builds this transport."""
    def add(cls):
        cls.name = name
        TRANSPORTS.register(name, cls)
        return cls
    return add


def register_reader(kind: str):
    """Function decorator: how a maker reads a handle part of this `kind` -> {name: tensor}."""
    def add(fn):
        READERS[kind] = fn
        return fn
    return add


def transport_class(spec: str) -> type:
    """A registered name, or `module:Class` (the module is imported, which registers its readers too): a
    WeightTransport subclass, else one line."""
    from coati_ray.errors import ConfigError

    cls = TRANSPORTS.resolve(spec)
    if not isinstance(cls, type) or not issubclass(cls, WeightTransport):
        raise ConfigError(f"config error: weight_sync.transport: '{spec}' is not a WeightTransport subclass; subclass "
                          "actors.transports.WeightTransport (docs/extending.md)")
    if cls.name == "?":  # not registered under a name of its own: the config's
        cls.name = spec
    return cls


def check_transport(spec: str) -> None:
    """Before Ray starts: `weight_sync.transport` is auto, a registered name, or a WeightTransport of one's own (one line
    when not)."""
    if spec != "auto":
        transport_class(spec)


def read_part(part: dict) -> dict:
    """Inside a maker: the tensors of one role's part of a handle, by its reader."""
    kind = part.get("kind") or ("ipc" if "ipc" in part else "object_store")
    if kind not in READERS and part.get("module"):
        importlib.import_module(part["module"])  # a transport of the user's own registers its reader on import
    if kind not in READERS:
        raise KeyError(f"no weight reader is registered for handle parts of kind '{kind}'")
    return READERS[kind](part)


class TransportDown(RuntimeError):
    """The transport cannot serve this job (a group that does not form, ipc refused): under `auto` the next
    transport takes over; chosen by name, `fatal` ends the run, else the object store serves from now on."""

    def __init__(self, message: str, fatal: bool = True):
        super().__init__(message)
        self.fatal = fatal


class TransportBroke(RuntimeError):
    """This version did not go through (a member failed mid-broadcast): the object store carries it and the
    transport is tried again at the next sync."""


@dataclass
class Published:
    received: set = field(default_factory=set)  # makers that got the version (swapped in before their next batch)
    bytes: int = 0                              # what went over the transport
    casts: int = 0                              # most tensors a maker cast to its dtype


class WeightTransport:
    name = "?"
    lazy = False

    def __init__(self, sync):
        self.sync = sync
        self.mapped = 0  # lazy transports: bytes one maker pulled since the last publish

    def publish(self, version: int) -> Optional[Published]:
        return None

    def handle_for(self, index: int, wait: bool = True) -> Optional[dict]:
        return None

    def close(self) -> None:
        pass


from actors.transports import collective, ipc, object_store  # noqa: E402,F401  (they register themselves)
