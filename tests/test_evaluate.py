"""launch.evaluate and the pipeline's evaluate section: lm-evaluation-harness on local task files the tests write
(no hub, no network: a guard refuses every connection off loopback), on a checkpoint in-process and on the
launch.serve endpoint.

Fast: a generation task scored by lm-eval's own exact_match (targets the model's greedy answer for half the
documents, so the score must be exactly 0.5), the built-in gold task offline, the command line's one-line errors,
the report's table. Slow: a multiple-choice task that a tiny llama trained on the sorting task answers above chance
and the untrained one does not; the same tasks through the serve endpoint; the pipeline's report table.
"""

import json
import os
import random
import socket

import pytest

from tests.conftest import REPO, data_path

pytest.importorskip("lm_eval")


@pytest.fixture
def offline(monkeypatch):
    """Every connection this process tries off loopback is refused and recorded (the test asserts none)."""
    tried = []
    connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not (str(host).startswith("127.") or host in
                                                                     ("::1", "localhost")):
            tried.append(address)
            raise OSError(f"test guard: no network ({address})")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield tried
    assert not tried, f"lm-eval tried the network: {tried}"


def write_task(directory, name: str, rows: list[dict], body: str) -> str:
    """A task YAML + its jsonl, as a user writes them."""
    os.makedirs(directory, exist_ok=True)
    data = os.path.join(directory, f"{name}.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(directory, f"{name}.yaml"), "w", encoding="utf-8") as f:
        f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(data)}\n"
                f"test_split: test\n{body}")
    return str(directory)


GENERATION = """output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

MULTIPLE_CHOICE = """output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def prompts(n: int, split: str = "eval") -> list[str]:
    with open(data_path("prompts", f"{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f][:n]


def sorting_choice_rows(n: int, seed: int = 0, split: str = "eval") -> list[dict]:
    """Sorting prompts, each with its sorted answer and three sorted lists of other numbers of the same length
    (shuffled): only a model that reads the prompt's numbers can tell them apart, so chance is 1/4. (Sorted
    permutations of the prompt's own numbers would not do: an untrained model prefers the ascending one ~1/3 of
    the time.)"""
    from coati_ray.tasks import sorting

    rng, rows = random.Random(seed), []
    for prompt in prompts(n, split):
        numbers = sorting.parse_prompt(prompt)
        right, wrong = sorting.answer_text(numbers), set()
        while len(wrong) < 3:
            other = sorting.answer_text([rng.randint(0, 30) for _ in numbers])
            if other != right:
                wrong.add(other)
        choices = [right, *sorted(wrong)]
        rng.shuffle(choices)
        rows.append({"question": prompt, "choices": choices, "label": choices.index(right)})
    return rows[:n]


def greedy_answers(model: str, texts: list[str], max_new_tokens: int = 8) -> list[str]:
    from coati_ray.config import load_config
    from coati_ray.config.generate import GenerateConfig
    from coati_ray.inference import Policy

    cfg = load_config(GenerateConfig, None, [f"model={model}", "generation.do_sample=false",
                                             f"generation.max_new_tokens={max_new_tokens}"])
    cfg.validate()
    return [c[0].response.split("\n")[0] for c in Policy.load(cfg).generate(texts, batch_size=1)]


def test_generation_task_is_scored_by_lm_evals_exact_match(tiny_llama, tmp_path, offline):
    """Half the targets are the model's own greedy answer (chat template, end-of-turn stop, as launch.generate
    answers), half are not: lm-eval's exact_match must say exactly 0.5."""
    from coati_ray.evaluation.lm_eval_model import CoatiLM
    from coati_ray.evaluation.lm_eval_run import resolve_tasks, run_harness

    texts = prompts(8)
    answers = greedy_answers(tiny_llama, texts)
    rows = [{"prompt": p, "answer": a if i % 2 == 0 else a + " nope"} for i, (p, a) in enumerate(zip(texts, answers))]
    tasks = write_task(tmp_path / "tasks", "echo_gen", rows, GENERATION)
    manager, names = resolve_tasks(["echo_gen"], [tasks], str(tmp_path / "work"))
    results = run_harness(CoatiLM(pretrained=tiny_llama, batch_size=1), names, manager)
    assert results["echo_gen"]["exact_match"] == 0.5 and results["echo_gen"]["samples"] == 8


def test_builtin_gold_task_runs_offline(tiny_llama, tmp_path, offline):
    """coati_sorting: written as a YAML + jsonl + scoring module that lm-eval reads; an untrained model scores 0."""
    from coati_ray.evaluation.lm_eval_model import CoatiLM
    from coati_ray.evaluation.lm_eval_run import resolve_tasks, run_harness

    manager, names = resolve_tasks(["coati_sorting"], [], str(tmp_path))
    written = sorted(os.listdir(tmp_path / "lm_eval_tasks"))
    assert written == ["coati_sorting.jsonl", "coati_sorting.yaml", "coati_sorting_scores.py"]
    first = json.loads((tmp_path / "lm_eval_tasks" / "coati_sorting.jsonl").read_text().splitlines()[0])
    assert first == {"prompt": "sort: 18 17 20 19 12", "answer": "12 17 18 19 20"}
    results = run_harness(CoatiLM(pretrained=tiny_llama), names, manager, limit=6)
    assert results["coati_sorting"]["exact_match"] == 0.0 and 0.0 <= results["coati_sorting"]["gold_score"] < 0.3


def test_cli_writes_results_and_never_overwrites(tiny_llama, tmp_path, offline, capsys):
    from launch.evaluate import main

    tasks = write_task(tmp_path / "tasks", "sort_mc", sorting_choice_rows(6), MULTIPLE_CHOICE)
    out = tmp_path / "eval"
    args = ["--model", tiny_llama, "--tasks", "sort_mc,coati_sorting", "--include-path", tasks, "--limit", "4",
            "--output-dir", str(out)]
    assert main(args) == 0
    saved = json.loads((out / "lm_eval.json").read_text())
    assert set(saved["results"]) == {"sort_mc", "coati_sorting"} and saved["results"]["sort_mc"]["samples"] == 4
    assert "| sort_mc | acc |" in (out / "lm_eval.md").read_text() and "sort_mc" in capsys.readouterr().out
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--tasks", "no_such_task"], "unknown lm-eval task(s) no_such_task"),
    (["--tasks", "coati_sorting", "--include-path", "/no/such/dir"], "'/no/such/dir' does not exist"),
    (["--tasks", "coati_sorting", "--endpoint", "http://127.0.0.1:9/v1"], "not allowed with argument"),
    (["--tasks", "coati_sorting", "--output-dir", "s3a://bucket/eval"], "has scheme 's3a://'"),
])
def test_cli_bad_input_is_one_line_before_any_model(tiny_llama, tmp_path, capsys, args, message):
    from launch.evaluate import main

    try:
        rc = main(["--model", tiny_llama, "--output-dir", str(tmp_path), *args])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "lm_eval.json")


def test_report_table_lines_up_stages():
    from coati_ray.reporting.lm_eval_table import markdown_table, report_section, terminal_table

    by_stage = {"base": {"coati_sorting": {"exact_match": 0.0, "gold_score": 0.1, "samples": 40}},
                "sft": {"coati_sorting": {"exact_match": 0.5, "gold_score": 0.8, "samples": 40}},
                "ppo": {"coati_sorting": {"exact_match": 0.6, "gold_score": 0.85, "samples": 40}}}
    md = markdown_table(by_stage)
    assert "| task | metric | base | after SFT | after PPO | change |" in md
    assert "| coati_sorting | exact_match | 0.000 | 0.500 | 0.600 | +0.600 |" in md
    assert "after PPO" in terminal_table(by_stage)
    assert any("same task as the gold score" in line for line in report_section(by_stage, 40, "sorting"))


# ---------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def sorting_sft(tiny_llama, tmp_path_factory) -> str:
    """The tiny llama after 300 SFT steps on the sorting demonstrations (configs/sft_tiny.yaml, cut short)."""
    from launch.sft import main

    out = tmp_path_factory.mktemp("sft") / "sft"
    assert main(["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), "--output-dir", str(out),
                 f"model.path={tiny_llama}", f"data.train_path={data_path('sft', 'train.jsonl')}",
                 "data.eval_path=null", "trainer.max_steps=300", "trainer.save_every=null",
                 "ray.dashboard=false"]) == 0
    return str(out / "checkpoints" / "final")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tasks")
    # 400 questions: an untrained model's small preferences average out (0.26 here, ± 0.022)
    write_task(directory, "sort_mc", sorting_choice_rows(400, split="train"), MULTIPLE_CHOICE)
    return str(directory)


def above_chance(acc: float, stderr: float, chance: float = 0.25) -> bool:
    """The accuracy's 95% interval lies above chance."""
    return acc - 2 * stderr > chance


@pytest.mark.slow
def test_trained_model_beats_chance_on_multiple_choice_and_the_untrained_one_does_not(
        tiny_llama, sorting_sft, task_dir, tmp_path, offline):
    from coati_ray.evaluation.lm_eval_model import CoatiLM
    from coati_ray.evaluation.lm_eval_run import resolve_tasks, run_harness

    manager, names = resolve_tasks(["sort_mc", "coati_sorting"], [task_dir], str(tmp_path))
    untrained = run_harness(CoatiLM(pretrained=tiny_llama), names, manager, limit=400)
    trained = run_harness(CoatiLM(pretrained=sorting_sft), names, manager, limit=400)
    print(f"\nsort_mc acc: untrained {untrained['sort_mc']['acc']:.3f}, trained {trained['sort_mc']['acc']:.3f}; "
          f"coati_sorting exact_match: untrained {untrained['coati_sorting']['exact_match']:.3f}, trained "
          f"{trained['coati_sorting']['exact_match']:.3f}")
    assert above_chance(trained["sort_mc"]["acc"], trained["sort_mc"]["acc_stderr"]) and \
        trained["sort_mc"]["acc"] >= 0.8
    assert not above_chance(untrained["sort_mc"]["acc"], untrained["sort_mc"]["acc_stderr"])
    assert untrained["coati_sorting"]["exact_match"] == 0.0 < 0.2 < trained["coati_sorting"]["exact_match"]


@pytest.mark.slow
def test_lm_eval_through_the_serve_endpoint_matches_in_process(sorting_sft, task_dir, tmp_path, offline):
    """lm-eval's own clients against launch.serve: the generation task through local-chat-completions (the
    server renders the chat template) scores as in-process; multiple choice through local-completions (echo +
    logprobs of raw text) as in-process without the template."""
    import ray
    from ray import serve

    from actors.cluster import connect, free_port
    from actors.serve import start_server
    from coati_ray.config import load_config
    from coati_ray.config.serve import ServeConfig
    from launch.evaluate import main

    connect(num_cpus=2, dashboard=False)
    try:
        cfg = load_config(ServeConfig, None, [f"model={sorting_sft}", f"port={free_port(18400)}", "num_cpus=0.5",
                                              "served_model_name=sorter"])
        cfg.validate()
        url = start_server(cfg)
        common = ["--tasks", "coati_sorting", "--limit", "24", "--overwrite"]
        assert main(["--endpoint", url, *common, "--output-dir", str(tmp_path / "chat")]) == 0
        assert main(["--endpoint", url, "--api", "completions", "--tokenizer", sorting_sft, "--tasks", "sort_mc",
                     "--include-path", task_dir, "--limit", "24", "--output-dir", str(tmp_path / "mc")]) == 0
    finally:
        serve.shutdown()
        ray.shutdown()
    assert main(["--model", sorting_sft, *common, "--output-dir", str(tmp_path / "local")]) == 0
    assert main(["--model", sorting_sft, "--no-chat", "--tasks", "sort_mc", "--include-path", task_dir, "--limit",
                 "24", "--output-dir", str(tmp_path / "local_mc")]) == 0
    read = lambda d: json.loads((tmp_path / d / "lm_eval.json").read_text())["results"]  # noqa: E731
    assert read("chat")["coati_sorting"]["exact_match"] == pytest.approx(read("local")["coati_sorting"]["exact_match"],
                                                                         abs=0.05)
    assert read("chat")["coati_sorting"]["exact_match"] > 0.2
    assert read("mc")["sort_mc"]["acc"] == pytest.approx(read("local_mc")["sort_mc"]["acc"], abs=0.1)
