"""Plots and a markdown report from a run directory: python -m launch.report DIR

DIR is a stage's run directory (metrics.jsonl inside) or a pipeline's (sft/, rm/, ppo/ inside);
it writes DIR/plots/*.png and DIR/report.md (and the same for each stage of a pipeline).
"""

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    from coati_ray.reporting.pipeline import STAGE_NAMES, write_pipeline_report
    from coati_ray.reporting.run_report import read_json, stage_report

    run_dir = args.run_dir
    stages = [s for s in STAGE_NAMES if os.path.isfile(os.path.join(run_dir, s, "metrics.jsonl"))]
    if not stages and not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        print(f"error: report error: '{run_dir}' has no metrics.jsonl (nor sft/, rm/, ppo/ with one); "
              "pass a run directory written by launch.sft/rm/ppo/pipeline", file=sys.stderr)
        return 2
    written = []
    for stage in stages:
        written.append(stage_report(os.path.join(run_dir, stage))["report_md"])
    if stages:
        summary = read_json(os.path.join(run_dir, "summary.json"))
        written.append(write_pipeline_report(run_dir, summary)["report_md"])
    else:
        written.append(stage_report(run_dir)["report_md"])
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
