"""Where torch.distributed groups meet without opening a port: a key-value store held by a Ray actor.

torch's `TCPStore` listens on every interface of its host, with no authentication, and its port is picked
free, closed and bound later (a race). Every group this job forms (each trainer group's world, each
weight-broadcast group) meets through a `Rendezvous` actor instead: members reach it only through Ray's
authenticated channel, holding its handle (the actor has no name to look it up by), and every key lives
under the group's random secret prefix, which travels only in Ray calls. `RendezvousStore` is the
`torch.distributed.Store` the process groups are built on. The data connections of a gloo group are then
bound to the interface Ray uses on the member's node (`bind_ip`: loopback for a local run).

    rendezvous = new_rendezvous()                       # the driver (or a group's owner)
    store = RendezvousStore(rendezvous, secret)              # in every member, before its process group
"""

from __future__ import annotations

import datetime
import os
import secrets
import threading
import time

import ray
import torch.distributed as dist

POLL_S = 0.01


class KeyValues:
    """The store's data: bytes by key, every method under one lock. The actor serving it is threaded (a member
    polling never blocks another one's set), so without the lock two `add`s read the same count and one is
    lost, two `compare_set`s both see the key unset and both win, and `count` or `forget` walking the keys
    fails when another thread sets one meanwhile (torch's rendezvous counts its members with `add`)."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def set(self, key: str, value: bytes) -> None:
        with self.lock:
            self.data[key] = value

    def get(self, key: str):
        with self.lock:
            return self.data.get(key)

    def add(self, key: str, amount: int) -> int:
        with self.lock:
            value = int(self.data.get(key, b"0")) + amount
            self.data[key] = str(value).encode()
            return value

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        """As torch's stores: set `desired` when the value is `expected` (b"" for unset); the value after."""
        with self.lock:
            current = self.data.get(key)
            if current == expected or (current is None and expected == b""):
                self.data[key] = desired
                return desired
            return current if current is not None else expected

    def check(self, keys: list) -> bool:
        with self.lock:
            return all(k in self.data for k in keys)

    def delete(self, key: str) -> bool:
        with self.lock:
            return self.data.pop(key, None) is not None

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for k in self.data if k.startswith(prefix))

    def forget(self, prefix: str) -> None:
        """Drop a finished group's keys."""
        with self.lock:
            for key in [k for k in self.data if k.startswith(prefix)]:
                del self.data[key]


@ray.remote(num_cpus=0, max_concurrency=64)
class Rendezvous(KeyValues):
    """KeyValues as the Ray actor every member of a group reaches through its handle."""


def new_rendezvous():
    """A Rendezvous on this (the driver's) node: it lives as long as the handle the caller keeps."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return Rendezvous.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote()


def new_secret() -> str:
    """A group's key prefix: unguessable, and only ever passed in Ray calls."""
    return secrets.token_hex(16)


def _bytes(value) -> bytes:
    """torch hands a store values as str or bytes."""
    return bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode()


class RendezvousStore(dist.Store):
    """A torch.distributed Store over a Rendezvous actor, every key under `secret`/."""

    def __init__(self, rendezvous, secret: str, timeout_s: float = 300.0):
        super().__init__()
        self.rendezvous, self.prefix, self.timeout_s = rendezvous, f"{secret}/", timeout_s

    def set(self, key, value) -> None:
        ray.get(self.rendezvous.set.remote(self.prefix + key, _bytes(value)))

    def get(self, key) -> bytes:
        self.wait([key])
        return ray.get(self.rendezvous.get.remote(self.prefix + key))

    def add(self, key, amount) -> int:
        return ray.get(self.rendezvous.add.remote(self.prefix + key, int(amount)))

    def compare_set(self, key, expected, desired) -> bytes:
        return ray.get(self.rendezvous.compare_set.remote(self.prefix + key, _bytes(expected), _bytes(desired)))

    def check(self, keys) -> bool:
        return ray.get(self.rendezvous.check.remote([self.prefix + k for k in keys]))

    def wait(self, keys, timeout=None) -> None:
        limit = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else (timeout or self.timeout_s)
        deadline = time.monotonic() + limit
        while not self.check(keys):
            if time.monotonic() > deadline:
                raise dist.DistStoreError(f"rendezvous: keys {list(keys)} not set within {limit:g}s")
            time.sleep(POLL_S)

    def delete_key(self, key) -> bool:
        return ray.get(self.rendezvous.delete.remote(self.prefix + key))

    def num_keys(self) -> int:
        return ray.get(self.rendezvous.count.remote(self.prefix))

    def set_timeout(self, timeout) -> None:
        self.timeout_s = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)


def node_bind_ip() -> str:
    """The address this node's group members listen on: 127.0.0.1 in a local run (its embedded Ray sets
    COATI_BIND_IP for every actor), else the IP Ray uses on this node."""
    from actors.cluster import BIND_IP_ENV

    return os.environ.get(BIND_IP_ENV) or ray.util.get_node_ip_address()


def interface_of(ip: str) -> str:
    """The network interface holding `ip` (gloo's default group device is chosen by interface name)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == ip for a in addresses):
            return name
    return "lo" if ip.startswith("127.") else ""


def bind_gloo_to(ip: str) -> None:
    """Make the process's default gloo group (a trainer group's world) listen on `ip`'s interface only."""
    name = interface_of(ip)
    if name:
        os.environ["GLOO_SOCKET_IFNAME"] = name
