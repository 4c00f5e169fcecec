"""Weight sync: seconds and GB/s from a trainer's weights to 1 and 3 makers' models, on each transport,
next to the raw floors of each: one `torch.distributed.broadcast` of a flat buffer of the same bytes,
one numpy `ray.put` + `ray.get` of them, and (ipc) one copy out of a shared-memory buffer of them that
the receiver maps.

    python -m benchmarks.bench_weight_sync [--repeats 3] [--sizes ...]

Ours runs the product's code: `WeightSync.publish` (actors/weight_sync.py) driving `WeightSender` in a
sender actor and `WeightReceiver` in each receiver actor (actors/weight_endpoints.py), timed until every
receiver holds the new weights in its model (object store: loaded; collective: received into staging
and swapped in; ipc: mapped and copied in). The actors here are benchmark scaffolding around those classes: a model and nothing
else, where the job's trainers and makers carry optimisers and four models.
"""

from __future__ import annotations

import argparse
import time

import ray

from benchmarks.common import save

# llama-family shapes: (hidden, layers, intermediate); vocabulary 32000 like llama's. fp32 weights:
# ~80 MB, ~290 MB (the medium workload's layers: benchmarks/common.py MEDIUM_SHAPE), ~670 MB and ~2.1 GB.
SIZES = {"llama-h256-l4": (256, 4, 688), "llama-h512-l10": (512, 10, 2048), "llama-h1024-l8": (1024, 8, 2752),
         "llama-h2048-l8": (2048, 8, 5504)}
VOCAB, LORA_RANK, BUCKET_MB = 32000, 8, 256


def build(size: str, lora: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from coati_ray.models import Actor

    hidden, layers, inter = SIZES[size]
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=max(4, hidden // 64), num_key_value_heads=max(4, hidden // 64),
                      tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")  # random bytes are fine: sync cost does not depend on values
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_RANK, target_modules="all-linear"))
    return Actor(model)


@ray.remote(num_cpus=0, concurrency_groups={"weights": 1})
class Sender:
    def __init__(self, size: str, lora: bool):
        import torch

        from actors.weight_endpoints import WeightSender
        from coati_ray.config.schema import StrategyConfig
        from coati_ray.strategies import Strategy

        torch.set_num_threads(1)
        self.sender = WeightSender(Strategy(StrategyConfig()), build(size, lora), lora, gathers=False)
        self.version = 1  # the steps its weights have seen, as a trainer rank reports them

    def set_version(self, version: int) -> None:
        self.version = version

    def sync_plan(self, bucket_bytes):
        return self.sender.plan(bucket_bytes)

    def join_sync(self, *args):
        self.sender.join(*args)

    def send_weights(self, buckets, export=False):
        return self.sender.send(buckets, export)

    @ray.method(concurrency_group="weights")
    def steps_trained(self):
        return {"steps": 1, "busy": False}

    @ray.method(concurrency_group="weights")
    def export_weights(self, block=True):
        return {**self.sender.export(), "version": 1}

    @ray.method(concurrency_group="weights")
    def export_ipc(self):
        return {**self.sender.export_ipc(), "version": self.version}

    def leave_sync(self):
        self.sender.leave()

    def release_shared(self) -> int:
        return self.sender.release_shared()  # as a trainer rank does before it is killed



@ray.remote(num_cpus=0, concurrency_groups={"weights": 1})
class Receiver:
    def __init__(self, size: str, lora: bool):
        import torch

        from actors.weight_endpoints import WeightReceiver

        torch.set_num_threads(1)
        self.receiver = WeightReceiver({"actor": build(size, lora)}, {"actor": lora})

    @ray.method(concurrency_group="weights")
    def join_sync(self, role, buckets, *args):
        self.receiver.join(role, buckets, *args)

    @ray.method(concurrency_group="weights")
    def receive_weights(self, role, buckets, version):
        return self.receiver.receive(role, buckets, version)

    @ray.method(concurrency_group="weights")
    def leave_sync(self):
        self.receiver.leave()

    def load_weights(self, handle):
        return self.receiver.load(handle)

    def node(self):
        return {"node": ray.get_runtime_context().get_node_id(), "device": "cpu", "gpus": []}

    def swap(self):
        return self.receiver.swap()



@ray.remote(num_cpus=0)
class RawPeer:
    """The floors: the same bytes as one numpy buffer through the object store, or one flat broadcast.
    A fresh actor without a model, so the floor does not compete with model memory."""

    def make(self, nbytes: int) -> None:
        import numpy as np

        self.array = np.ones(nbytes, dtype=np.uint8)  # allocated before timing: the floor is put + get

    def put(self) -> list:
        return [ray.put(self.array)]

    def get(self, ref) -> int:
        return int(ray.get(ref[0]).nbytes)

    def share(self) -> bytes:
        """ipc's floor, the sender's side: the buffer as a blob one receiver maps (coati_ray/models/shared_tensors.py)."""
        import torch

        from coati_ray.models.shared_tensors import share

        if not hasattr(self, "tensor"):
            self.tensor = torch.from_numpy(self.array)
        return share({"buffer": self.tensor})

    def release_shared(self) -> int:
        from coati_ray.models.shared_tensors import shared_files, unlink_shared

        return unlink_shared(shared_files({"buffer": self.tensor})) if hasattr(self, "tensor") else 0

    def copy_shared(self, blob: bytes) -> int:
        """ipc's floor, the receiver's side: map the buffer and copy it once into memory of its own."""
        import torch

        from coati_ray.models.shared_tensors import open_shared

        mapped = open_shared(blob)["buffer"]
        if getattr(self, "own", None) is None or self.own.numel() != mapped.numel():
            self.own = torch.empty_like(mapped)  # allocated once, as a model's weights are
        self.own.copy_(mapped)
        return int(mapped.numel())

    def broadcast(self, meeting, rank, size, nbytes) -> float:
        import torch

        from actors.broadcast_group import WeightBroadcastGroup

        group = WeightBroadcastGroup(meeting, rank, size, "gloo", 600)
        buf = torch.ones(nbytes // 4, dtype=torch.float32)
        group.broadcast(buf)  # warm-up: connections
        t = time.perf_counter()
        group.broadcast(buf)
        return time.perf_counter() - t


class _Trainers:
    def __init__(self, sender):
        from actors.rendezvous import new_rendezvous

        self.ranks = {"actor": [sender]}
        self.rendezvous = new_rendezvous()

    def get(self, refs):
        return ray.get(refs)

    def lost_message(self, err):
        return str(err)


class _Pool:
    def __init__(self, receivers):
        self.makers = dict(enumerate(receivers))
        self.incarnation = {i: 0 for i in self.makers}

    def published(self, version, received):
        pass


def ours(transport: str, sender, receivers, repeats: int) -> dict:
    """Best of `repeats` syncs: seconds of the publish (object store: the put; collective: the broadcast until
    every receiver has it in staging), of the makers' part between batches (object store: get and copy
    into the model; collective: the swap from staging), and of both; and the bytes moved."""
    from actors.weight_sync import WeightSync
    from coati_ray.config.rl import SyncConfig

    from types import SimpleNamespace

    cfg = type("Cfg", (), {})()
    cfg.weight_sync = SyncConfig(transport=transport, bucket_mb=BUCKET_MB, timeout_s=600, backend="gloo")
    cfg.algorithm = SimpleNamespace(mode="sync")
    cfg.actor_trainer = SimpleNamespace(resources=SimpleNamespace(num_gpus_per_rank=0),
                                        strategy=SimpleNamespace(name="naive"))
    sync = WeightSync(cfg, _Trainers(sender), _Pool(receivers), info=lambda m: None)
    rows, nbytes = [], 0

    def apply():
        if transport == "object_store":
            handle = sync.object_store_handle()
            return ray.get([r.load_weights.remote(handle) for r in receivers])
        if transport == "ipc":  # a blob per maker (each holds one reference), as MakerPool asks for them
            loads = ray.get([r.load_weights.remote(sync.handle_for(i)) for i, r in enumerate(receivers)])
            assert all(x["transport"] == "ipc" for x in loads), loads
            return loads
        return ray.get([r.swap.remote() for r in receivers])

    sync.publish(1)  # forms the collective group (its cost is paid once per membership, not per sync)
    apply()
    for version in range(2, repeats + 2):
        ray.get(sender.set_version.remote(version))  # a new version of the weights (the values do not matter)
        t = time.perf_counter()
        stats = sync.publish(version)
        t_pub = time.perf_counter()
        loads = apply()
        t_end = time.perf_counter()
        rows.append({"publish_seconds": t_pub - t, "apply_seconds": t_end - t_pub, "seconds": t_end - t})
        nbytes = stats["bytes"] if transport != "ipc" else loads[0]["bytes"]
    sync.close()
    best = min(rows, key=lambda r: r["seconds"])
    return {**best, "bytes": nbytes}


def raw(makers: int, nbytes: int, repeats: int) -> tuple[float, float, float]:
    """Best seconds of a numpy put + get to every receiver, of one flat gloo broadcast to all of them, and of
    every receiver mapping a shared-memory buffer of the same bytes and copying it once."""
    sender, receivers = RawPeer.remote(), [RawPeer.remote() for _ in range(makers)]
    ray.get(sender.make.remote(nbytes))
    puts, maps = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ref = sender.put.remote()
        ray.get([r.get.remote(ref) for r in receivers])
        puts.append(time.perf_counter() - t)
        del ref
    ray.get(sender.share.remote())  # the buffer moves into shared memory once, as a trainer's weights do
    for _ in range(repeats + 1):
        t = time.perf_counter()
        ray.get([r.copy_shared.remote(sender.share.remote()) for r in receivers])
        maps.append(time.perf_counter() - t)
    from actors.rendezvous import new_rendezvous, new_secret

    meeting = (new_rendezvous(), new_secret())
    size = 1 + makers
    bcast = ray.get([sender.broadcast.remote(meeting, 0, size, nbytes)] +
                    [r.broadcast.remote(meeting, i + 1, size, nbytes) for i, r in enumerate(receivers)])[0]
    ray.kill(meeting[0])
    ray.get(sender.release_shared.remote())
    for a in [sender, *receivers]:
        ray.kill(a)
    return min(puts), bcast, min(maps[1:])  # the first copy also allocates the receivers' buffers


def measure(size: str, lora: bool, makers: int, repeats: int) -> dict:
    sender = Sender.remote(size, lora)
    receivers = [Receiver.remote(size, lora) for _ in range(makers)]
    ray.get([a.__ray_ready__.remote() for a in [sender, *receivers]])
    row = {"size": size, "mode": "lora" if lora else "full", "makers": makers}
    for transport in ("object_store", "collective", "ipc"):
        r = ours(transport, sender, receivers, repeats)
        row["bytes"] = r.pop("bytes")
        row[transport] = {**r, "gb_per_s": row["bytes"] / r["seconds"] / 1e9,
                          "publish_gb_per_s": row["bytes"] / r["publish_seconds"] / 1e9}
    ray.get(sender.release_shared.remote())
    for a in [sender, *receivers]:
        ray.kill(a)
    put_s, bcast_s, map_s = raw(makers, row["bytes"], repeats)
    row["raw_put_get"] = {"seconds": put_s, "gb_per_s": row["bytes"] / put_s / 1e9}
    row["raw_broadcast"] = {"seconds": bcast_s, "gb_per_s": row["bytes"] / bcast_s / 1e9}
    row["raw_shared_copy"] = {"seconds": map_s, "gb_per_s": row["bytes"] / map_s / 1e9}
    row["ipc_over_raw"] = row["ipc"]["seconds"] / map_s
    # The broadcast is done when every maker holds the weights in staging; the swap into the model happens
    # on the maker between batches, off the sync's path. Both are reported; the target is on the broadcast.
    row["collective_over_raw_bandwidth"] = row["collective"]["publish_gb_per_s"] / row["raw_broadcast"]["gb_per_s"]
    row["object_store_over_raw_time"] = row["object_store"]["seconds"] / put_s
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", nargs="*", default=list(SIZES))
    args = p.parse_args(argv)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="coati-bench",
             object_store_memory=6 * 2**30)
    rows = []
    try:
        for size in args.sizes:
            for lora, makers in ((False, 1), (False, 3), (True, 1)):
                rows.append(measure(size, lora, makers, args.repeats))
                r = rows[-1]
                print(f"[bench] sync {size} {r['mode']} x{makers}: {r['bytes'] / 1e6:.1f} MB; object store "
                      f"{r['object_store']['seconds']:.3f}s ({r['object_store_over_raw_time']:.2f}x raw put+get), "
                      f"collective {r['collective']['seconds']:.3f}s ({r['collective_over_raw_bandwidth']:.2f} of raw "
                      f"broadcast bandwidth), ipc {r['ipc']['seconds']:.3f}s ({r['ipc_over_raw']:.2f}x a raw "
                      "shared-memory copy)", flush=True)
    finally:
        ray.shutdown()
    full = {(r["size"], r["makers"]): r for r in rows if r["mode"] == "full"}
    scaling = {size: full[(size, 3)]["collective"]["publish_seconds"] / full[(size, 1)]["collective"]["publish_seconds"]
               for size in args.sizes if (size, 1) in full and (size, 3) in full}
    summary = {"collective_over_raw_bandwidth_min": min(r["collective_over_raw_bandwidth"] for r in full.values()),
               "object_store_over_raw_time_max": max(r["object_store_over_raw_time"] for r in full.values()),
               "collective_3_over_1_makers": scaling,
               "ipc_over_raw": max(r["ipc_over_raw"] for r in full.values())}
    save("weight_sync", {"rows": rows, "lora_rank": LORA_RANK, "repeats": args.repeats, "bucket_mb": BUCKET_MB,
                         **summary, "command": "python -m benchmarks.bench_weight_sync"})
    return {"rows": rows, **summary}


if __name__ == "__main__":
    main()
