"""The documentation's generated pages, so they cannot drift: the config reference from the config dataclasses
(docs/reference/config.md) and the benchmark results from benchmarks/RESULTS.md (docs/benchmarks.md, itself
written from RESULTS.json by `python -m benchmarks.report`).

    python scripts/config_reference.py           # rewrite both pages
    python scripts/config_reference.py --check   # exit 1 if either is stale (`make docs` and a test run it)
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from coati_ray.config import RMConfig, SFTConfig, describe  # noqa: E402
from coati_ray.config.generate import GenerateConfig  # noqa: E402
from coati_ray.config.pretrain import PretrainConfig  # noqa: E402
from coati_ray.config.pipeline import PipelineConfig  # noqa: E402
from coati_ray.config.rl import RLConfig  # noqa: E402
from coati_ray.config.serve import ServeConfig  # noqa: E402

CONFIG_PAGE = os.path.join(ROOT, "docs", "reference", "config.md")
BENCH_PAGE = os.path.join(ROOT, "docs", "benchmarks.md")
CONFIG_INTRO = """# Config reference

Every key of every launcher's config, generated from the config dataclasses (`coati_ray/config/`) by
`python scripts/config_reference.py`, so it cannot drift: a test fails when this page is stale. Each key is
`section.key=value` on the command line or nested YAML in `--config`; `--help-config` on a launcher prints the
same. Keys renamed since a config was written are read under their new names, said once
([Concepts: renames](../concepts.md#renames)).

"""


def reference() -> str:
    lines = []
    sft_rows = {row[0]: row for row in describe(SFTConfig)}
    for title, cls in (("SFT (`launch.sft`)", SFTConfig), ("RM (`launch.rm`): every SFT key (but `use_neft`, refused), plus", RMConfig),
                       ("Pretrain (`launch.pretrain`): every SFT key, plus these (and their own defaults)", PretrainConfig),
                       ("PPO (`launch.ppo`)", RLConfig)):
        extends_sft = cls in (RMConfig, PretrainConfig)
        rows = [r for r in describe(cls) if not extends_sft or sft_rows.get(r[0]) != r or r[0] == "output_dir"]
        lines += [f"**{title}**", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {t.replace('|', '/')} | `{d}` | {h} |" for k, t, d, h in rows]
        lines.append("")
    own = [r for r in describe(PipelineConfig) if "." not in r[0] or r[0].split(".")[0] in ("expand_vocab", "prepare", "evaluate")]
    lines += ["**Pipeline (`launch.pipeline`)**: `pretrain.*`, `sft.*`, `rm.*` and `ppo.*` take the keys of the tables "
              "above; the pipeline sets each stage's `output_dir`, `pretrain.model.path` (after expand_vocab), "
              "`pretrain.data.train_path` (`<output_dir>/prepared`), `sft.model.path` (after expand_vocab or pretrain), "
              "`rm.model.path` and `ppo.{actor,critic,reward}.path`, and every stage's seed", "",
              "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t.replace('|', '/')} | `{d}` | {h} |" for k, t, d, h in own]
    lines += ["", "**Generate (`launch.generate`)**: `--model`, `--lora`, `--quantize`, `--n` and `--reward-model` set "
              "the keys of the same names", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t.replace('|', '/')} | `{d}` | {h} |" for k, t, d, h in describe(GenerateConfig)]
    lines.append("")
    generate_keys = {row[0] for row in describe(GenerateConfig)}
    lines += ["**Serve (`launch.serve`)**: the Generate keys that load the model (`model`, `revision`, `lora`, "
              "`quantize`, `tokenizer_path`, `chat_template`, `dtype`), plus", "", "| key | type | default | meaning |",
              "|---|---|---|---|"]
    lines += [f"| `{k}` | {t.replace('|', '/')} | `{d}` | {h} |" for k, t, d, h in describe(ServeConfig)
              if k not in generate_keys]
    lines.append("")
    return "\n".join(lines)


def benchmarks_page() -> str:
    """docs/benchmarks.md: the measured results (benchmarks/RESULTS.md), its links pointed at the repository."""
    import re

    with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), encoding="utf-8") as f:
        results = f.read()
    body = results.split("\n", 1)[1]  # its own title: the page's is below
    # links relative to benchmarks/ (RESULTS.json, the scripts) point at files, not pages: named as code instead
    body = re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)",
                  lambda m: m.group(1) if m.group(1).startswith("`") else f"{m.group(1)} (`benchmarks/{m.group(2)}`)",
                  body)
    with open(os.path.join(ROOT, "docs", "benchmarks-overview.md"), encoding="utf-8") as f:
        overview = f.read()
    return overview.rstrip("\n") + "\n\n## The measured results\n\n" + re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)


def pages() -> dict:
    return {CONFIG_PAGE: CONFIG_INTRO + reference(), BENCH_PAGE: benchmarks_page()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for path, text in pages().items():
        old = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        if old != text:
            stale.append(os.path.relpath(path, ROOT))
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run python scripts/config_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
