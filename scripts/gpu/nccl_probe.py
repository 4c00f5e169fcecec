"""Can two processes form an NCCL group on one GPU (what a trainer rank and a maker sharing a GPU by
fractional num_gpus would need for a collective weight sync)? Prints the answer NCCL gives."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=rank, world_size=2, device_id=torch.device("cuda", 0))
    t = torch.full((4,), float(rank), device="cuda")
    dist.broadcast(t, src=0)
    torch.cuda.synchronize()
    print(f"rank {rank}: broadcast on one GPU worked -> {t.tolist()}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(rank_main, args=(port,), nprocs=2, join=True)
        print("NCCL: two ranks on one GPU WORK")
    except Exception as e:
        print(f"NCCL: two ranks on one GPU REFUSED: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
