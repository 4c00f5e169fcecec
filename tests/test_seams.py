"""Every seam (coati_ray/seams.py) extended from a module outside the package and run in a tiny job through the
harness (actors/testing.py), its effect checked; a plug-in registered by name is found through `plugins`, or
refused before Ray starts."""

import os
import textwrap

import pytest

from coati_ray.errors import ConfigError

ray = pytest.importorskip("ray")

MY_SEAMS = '''
import os

from actors.colocated import ColocatedSource
from actors.transports import register_transport
from actors.transports.object_store import ObjectStore
from coati_ray.algo.advantages import estimator
from coati_ray.models.generators import hf
from coati_ray.seams import Placement, register_placement


def seen(what):
    """Each plug-in says it ran: one line in the test's log file (makers and trainers are other processes)."""
    with open(os.environ["MY_SEAMS_LOG"], "a") as f:
        f.write(what + "\\n")


@estimator(group_relative=True)
def centred(x):
    seen("estimator")
    g = x.scores.float().view(-1, x.group_size)
    return x.with_kl((g - g.mean(dim=1, keepdim=True)).flatten()), None


def length_bonus(scale=1.0):
    def score(prompts, responses, rows):
        seen("reward")
        return [scale * len(r) for r in responses]
    return score


def traced(actor, gen, input_ids, attention_mask, tokenizer=None, **extra):
    seen("generate")
    return hf(actor, gen, input_ids, attention_mask, tokenizer, **extra)


class OneTurn:
    def reset(self, row):  # every episode starts here (a tiny untrained policy may never finish a turn)
        seen("environment")
        return None

    def step(self, text):
        return None, 1.0, True


@register_transport("my_disk")
class MyDisk(ObjectStore):
    def publish(self, version):
        seen("transport")
        return super().publish(version)


class CountedSource(ColocatedSource):
    def run(self, step):
        seen("placement")
        return super().run(step)


COUNTED = Placement("counted", "my_seams:CountedSource", makers=False, trainers_generate=True)
register_placement(COUNTED)
'''


@pytest.fixture(scope="module")
def seams(tmp_path_factory):
    """`my_seams` on the path of this process and of every Ray worker (one Ray for the module)."""
    import sys

    root = tmp_path_factory.mktemp("user_code")
    (root / "my_seams.py").write_text(textwrap.dedent(MY_SEAMS))
    log = root / "seen.log"
    sys.path.insert(0, str(root))
    os.environ["MY_SEAMS_LOG"] = str(log)
    paths = os.pathsep.join(p for p in sys.path if p)
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": paths, "MY_SEAMS_LOG": str(log), "TOKENIZERS_PARALLELISM": "false"}})
    yield log
    ray.shutdown()
    sys.path.remove(str(root))


def ran(log) -> set:
    return set(log.read_text().split()) if log.exists() else set()


@pytest.mark.slow
@pytest.mark.parametrize("seam, overrides", [
    ("estimator", ["algorithm.advantage_estimator=my_seams:centred"]),
    ("reward", ["rewards.function=null", "rewards.sources=[{kind: 'my_seams:length_bonus', options: {scale: 2}}]"]),
    ("generate", ["generation.backend=my_seams:traced"]),
    ("environment", ["rollout.environment=my_seams:OneTurn"]),
    ("transport", ["plugins=[my_seams]", "weight_sync.transport=my_disk"]),
    ("placement", ["plugins=[my_seams]", "placement=counted"]),
])
def test_a_plugin_of_ones_own_runs_in_a_tiny_job(seams, seam, overrides, tmp_path):
    from actors.testing import tiny_job

    seams.write_text("")
    run = tiny_job(*overrides, steps=1, output_dir=str(tmp_path / seam))
    assert run.summary["steps"] == 1 and seam in ran(seams)


def test_a_name_no_module_registers_is_refused_before_ray(tmp_path):
    from actors.testing import tiny_config

    for overrides, needle in ((["weight_sync.transport=my_disk"], "'my_disk' is not a weight transport"),
                              (["placement=counted"], "'counted' is not a placement")):
        with pytest.raises(ConfigError) as e:
            tiny_config(*overrides, output_dir=str(tmp_path))
        assert needle in str(e.value) and "plugins: [...]" in str(e.value)
    assert not ray.is_initialized()
