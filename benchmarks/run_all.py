"""`make bench`: every CPU benchmark in turn, then benchmarks/RESULTS.md. About 4 hours on a 2-core box, most of it
the TRL side by side (3 interleaved rounds of every configuration)
(the first run also builds the pinned TRL venv)."""

from __future__ import annotations

import time

from benchmarks import bench_efficiency, bench_generation, bench_pipeline, bench_quantize, bench_trl, bench_weight_sync, report, soak


def main() -> None:
    t = time.time()
    for name, run in (("TRL side by side (3 interleaved rounds, every layout of each side)",
                       lambda: bench_trl.main(["--steps", "12", "--repeats", "3"])),
                      ("TRL side by side, 39M llama x 64 tokens",
                       lambda: bench_trl.main(["--steps", "12", "--repeats", "3", "--workload", "medium"])),
                      ("pipeline efficiency and maker scaling", lambda: bench_pipeline.main(["--steps", "8"])),
                      ("pipeline efficiency, 39M llama x 64 tokens",
                       lambda: bench_pipeline.main(["--steps", "8", "--workload", "medium", "--no-scaling"])),
                      ("work per sample with and without compaction and packing, 39M llama",
                       lambda: bench_efficiency.main(["--workload", "medium"])),
                      ("generation against forward passes", lambda: bench_generation.main(["--workload", "tiny"])),
                      ("generation against forward passes, 39M llama",
                       lambda: bench_generation.main(["--workload", "medium"])),
                      ("weight sync", lambda: bench_weight_sync.main([])),
                      ("quantized inference", lambda: bench_quantize.main([])),
                      ("soak", lambda: soak.main([]))):
        print(f"[bench] === {name} ({time.time() - t:.0f}s so far)", flush=True)
        run()
    report.write()
    print(f"[bench] done in {time.time() - t:.0f}s")


if __name__ == "__main__":
    main()
