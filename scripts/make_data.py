"""Write the small synthetic datasets shipped in data/ (deterministic: same seed, same files).

    python scripts/make_data.py [--out data] [--seed 0]

sft/train.jsonl, sft/eval.jsonl    `messages` rows; imperfect demonstrations (~35% flawed answers)
sft/instruction.jsonl              the same task in `instruction`/`input`/`output` layout
pref/train.jsonl, pref/eval.jsonl  `prompt`/`chosen`/`rejected`, ranked by the gold score (the "labeller")
prompts/train.jsonl, eval.jsonl    `prompt` rows for PPO
ptx/train.jsonl                    correct demonstrations for the PPO-ptx pretraining loss
pretrain/*.jsonl                   `source`/`target`/`category` rows (English and Chinese) for launch.prepare_data --mode pretrain
sft_bilingual/train.jsonl          `messages` rows in English and Chinese with a `category`, for --mode sft
vocab/pieces.jsonl                 `piece` rows (English and Chinese) for launch.expand_vocab
calc/sft.jsonl                     `messages` rows with a `tool` turn: the calc task's tool use (~25% flawed)
calc/prompts.jsonl, calc/eval.jsonl  `prompt` rows of the calc task (make demo-tools)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from coati_ray.tasks.sorting import answer_text, corrupt, gold_score, prompt_text, sample_numbers  # noqa: E402


def write(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows):5d} rows to {path}")


def sft_rows(rng: random.Random, n: int, flawed: float) -> list[dict]:
    rows = []
    for _ in range(n):
        nums = sample_numbers(rng)
        answer = corrupt(nums, rng, severity=1) if rng.random() < flawed else answer_text(nums)
        rows.append({"messages": [{"from": "human", "content": prompt_text(nums)},
                                  {"from": "assistant", "content": answer}]})
    return rows


MIN_GAP = 0.2


def pref_rows(rng: random.Random, n: int) -> list[dict]:
    """Two candidate answers per prompt, ordered by the gold score as a human labeller would.

    60% of the pairs set the correct answer against a flawed one, the rest two flawed answers of
    different quality, so the reward model learns a graded score and not only "is it perfect".
    Near-ties (gold scores within MIN_GAP) are skipped, as a labeller would call them equal.
    """
    rows = []
    while len(rows) < n:
        nums = sample_numbers(rng)
        first = answer_text(nums) if rng.random() < 0.6 else corrupt(nums, rng, severity=1)
        second = corrupt(nums, rng, severity=rng.randint(1, 3))
        a, b = gold_score(nums, first), gold_score(nums, second)
        if abs(a - b) < MIN_GAP:
            continue
        chosen, rejected = (first, second) if a > b else (second, first)
        rows.append({"prompt": prompt_text(nums), "chosen": chosen, "rejected": rejected})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = os.path.normpath(args.out)
    write(f"{out}/sft/train.jsonl", sft_rows(rng, 1200, flawed=0.35))
    write(f"{out}/sft/eval.jsonl", sft_rows(rng, 100, flawed=0.0))
    inst = []
    for _ in range(200):
        nums = sample_numbers(rng)
        inst.append({"instruction": "Sort these numbers in ascending order.", "input": " ".join(map(str, nums)),
                     "output": answer_text(nums)})
    write(f"{out}/sft/instruction.jsonl", inst)
    write(f"{out}/pref/train.jsonl", pref_rows(rng, 4000))
    write(f"{out}/pref/eval.jsonl", pref_rows(rng, 200))
    write(f"{out}/prompts/train.jsonl", [{"prompt": prompt_text(sample_numbers(rng))} for _ in range(800)])
    write(f"{out}/prompts/eval.jsonl", [{"prompt": prompt_text(sample_numbers(rng))} for _ in range(100)])
    ptx = []
    for _ in range(400):
        nums = sample_numbers(rng)
        ptx.append({"messages": [{"from": "human", "content": prompt_text(nums)},
                                 {"from": "assistant", "content": answer_text(nums)}]})
    write(f"{out}/ptx/train.jsonl", ptx)
    pretrain_rows(random.Random(args.seed + 1), out)
    calc_rows(random.Random(args.seed + 2), out)


def calc_rows(rng: random.Random, out: str) -> None:
    """The calc task (coati_ray/tasks/calc.py), with its own generator so the files above do not change."""
    from coati_ray.tasks import calc

    write(f"{out}/calc/sft.jsonl", [calc.demonstration(rng, flawed=rng.random() < 0.25) for _ in range(1200)])
    write(f"{out}/calc/prompts.jsonl", [{"prompt": calc.prompt_text(*calc.sample_operands(rng))} for _ in range(800)])
    write(f"{out}/calc/eval.jsonl", [{"prompt": calc.prompt_text(*calc.sample_operands(rng))} for _ in range(100)])


def pretrain_rows(rng: random.Random, out: str) -> None:
    """Colossal-LLaMA's pretraining layout (`source`, `target`, `category`), two categories, for
    launch.prepare_data --mode pretrain (its own generator, so the files above do not change)."""
    sorting = []
    for _ in range(400):
        nums = sample_numbers(rng)
        sorting.append({"source": prompt_text(nums) + " ->", "target": " " + answer_text(nums), "category": "sorting"})
    write(f"{out}/pretrain/sorting.jsonl", sorting)
    counting = []
    for _ in range(200):
        start, n = rng.randint(1, 20), rng.randint(3, 8)
        counting.append({"source": "", "target": "count: " + " ".join(str(start + i) for i in range(n)),
                         "category": "counting"})
    write(f"{out}/pretrain/counting.jsonl", counting)
    zh = []  # the same tasks in Chinese: a bilingual corpus, as Colossal-LLaMA's
    for _ in range(200):
        nums = sample_numbers(rng)
        zh.append({"source": "排序: " + " ".join(map(str, nums)) + " ->", "target": " " + answer_text(nums),
                   "category": "sorting_zh"})
    write(f"{out}/pretrain/sorting_zh.jsonl", zh)
    sft = []
    for i in range(200):
        nums = sample_numbers(rng)
        human = ("请把这些数字从小到大排序: " if i % 2 else "Sort these numbers: ") + " ".join(map(str, nums))
        sft.append({"messages": [{"from": "human", "content": human}, {"from": "assistant", "content": answer_text(nums)}],
                    "category": "zh" if i % 2 else "en"})
    write(f"{out}/sft_bilingual/train.jsonl", sft)
    pieces = ["sort:", " ->", "count:", "排序", "数字", "请把这些数字从小到大排序", "排序"]  # the repeat is skipped
    write(f"{out}/vocab/pieces.jsonl", [{"piece": p} for p in pieces])


if __name__ == "__main__":
    main()
