"""Generate the README's config reference from the config dataclasses, so it cannot drift.

    python scripts/config_reference.py           # rewrite README.md between the markers
    python scripts/config_reference.py --check   # exit 1 if README.md is stale
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

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    path = os.path.join(ROOT, "README.md")
    text = open(path, encoding="utf-8").read()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{reference()}\n{END}{tail}"
    if args.check:
        return 0 if new == text else 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
