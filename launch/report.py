"""Plots and a markdown report from a run directory: python -m launch.report DIR

DIR is a stage's run directory (metrics.jsonl inside) or a pipeline's (sft/, rm/, ppo/ inside);
it writes DIR/plots/*.png and DIR/report.md (and the same for each stage of a pipeline). DIR may be a URI
(s3://bucket/run, gs://, hdfs://): its metrics and summaries are fetched, the report written and uploaded.
"""

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    from coati_ray.errors import CoatiError
    from coati_ray.storage.mirror import Mirror

    mirror = Mirror(args.run_dir)  # a remote run directory: its small files here; a local one: itself
    try:
        mirror.pull()
        written = write_reports(mirror.local, args.run_dir)
        mirror.push()
    except CoatiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        mirror.discard()
    if written is None:
        return 2
    for path in written:
        print(f"wrote {mirror.shown(path)}")
    return 0


def write_reports(run_dir: str, shown: str):
    """The reports of the run directory `run_dir` (on this machine; `shown`: its name for the user), or None
    after the error line when it holds no metrics."""
    from coati_ray.reporting.pipeline import STAGE_NAMES, write_pipeline_report
    from coati_ray.reporting.run_report import read_json, stage_report

    stages = [s for s in STAGE_NAMES if os.path.isfile(os.path.join(run_dir, s, "metrics.jsonl"))]
    if not stages and not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        print(f"error: report error: '{shown}' has no metrics.jsonl (nor sft/, rm/, ppo/ with one); "
              "pass a run directory written by launch.sft/rm/ppo/pipeline", file=sys.stderr)
        return None
    written = []
    for stage in stages:
        written.append(stage_report(os.path.join(run_dir, stage))["report_md"])
    if stages:
        summary = read_json(os.path.join(run_dir, "summary.json"))
        written.append(write_pipeline_report(run_dir, summary)["report_md"])
    else:
        written.append(stage_report(run_dir)["report_md"])
    return written


if __name__ == "__main__":
    sys.exit(main())
