"""examples/kuberay/rayjob.yaml, the pipeline as a KubeRay RayJob (docs/guides/cluster.md, "KubeRay"), is checked
against the code it runs, without Kubernetes or Ray: its entrypoint parses with the pipeline's own argument parser
(a renamed or removed flag fails here), its config file loads with its overrides (a wrong key fails here), its
results go to an object store, its credentials come only from a Secret, and its pods run one image of the Ray the
project installs. The page's kubectl commands name this manifest, its Secret and its RayJob."""

import importlib.metadata
import os
import re
import shlex

import pytest
import yaml

from tests.conftest import REPO

MANIFEST = os.path.join(REPO, "examples", "kuberay", "rayjob.yaml")
PAGE = os.path.join(REPO, "docs", "guides", "cluster.md")
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SECRET = "coati-s3"


@pytest.fixture(scope="module")
def job() -> dict:
    with open(MANIFEST, encoding="utf-8") as f:
        return yaml.safe_load(f)


def entrypoint_args(job: dict) -> list[str]:
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "launch.pipeline"], words
    return words[3:]


def parsed(job: dict):
    """The entrypoint's arguments as launch/pipeline.py's main() parses them."""
    import launch.pipeline
    from launch.common import parser_for

    argv = entrypoint_args(job)
    try:
        return parser_for("pipeline", launch.pipeline.__doc__).parse_intermixed_args(argv)
    except SystemExit as e:  # OneLineParser: the reason is on stderr
        pytest.fail(f"launch.pipeline refuses the manifest's arguments {argv} (exit {e.code})")


def pod_specs(job: dict) -> list[tuple[str, dict]]:
    cluster = job["spec"]["rayClusterSpec"]
    specs = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    specs += [(f"worker group {g['groupName']}", g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    return specs


def ray_containers(job: dict) -> list[tuple[str, dict]]:
    return [(f"{where} container {c['name']}", c) for where, spec in pod_specs(job) for c in spec["containers"]]


def every_container(job: dict) -> list[tuple[str, dict]]:
    out = ray_containers(job)
    submitter = job["spec"].get("submitterPodTemplate")
    if submitter:
        out += [(f"submitter container {c['name']}", c) for c in submitter["spec"]["containers"]]
    return out


def test_a_rayjob_of_the_current_api(job):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"] is not None
    assert cluster["workerGroupSpecs"], "a head and at least one worker group"
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["replicas"] >= 1 and "rayStartParams" in group
        assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])
    for where, container in ray_containers(job):
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["cpu"], where
        assert resources["requests"]["memory"] and resources["limits"]["memory"], where


def test_the_entrypoint_parses_with_the_pipelines_own_parser(job):
    args = parsed(job)
    assert args.config and not args.help_config and not args.print_config
    assert args.resume is None and not args.overwrite  # a fresh run: KubeRay retries must not mix or wipe runs
    assert args.ray_address is None  # the job's driver finds its cluster through RAY_ADDRESS
    assert all("=" in o for o in args.overrides), args.overrides


def test_the_results_go_to_an_object_store(job):
    assert re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]+/\S+", parsed(job).output_dir)


def test_the_config_exists_and_loads_with_the_entrypoints_overrides(job):
    from coati_ray.config import load_config
    from coati_ray.config.pipeline import PipelineConfig, prepare_pipeline_dict

    args = parsed(job)
    assert not os.path.isabs(args.config)  # relative to the repository, the pods' working directory
    path = os.path.join(REPO, args.config)
    assert os.path.isfile(path), f"{args.config}: no such file"
    cfg = load_config(PipelineConfig, path, args.overrides, output_dir=args.output_dir, prepare=prepare_pipeline_dict)
    cfg.link()  # what main() does before validate(), which would reach the object store
    assert cfg.output_dir == args.output_dir
    assert cfg.ppo.output_dir == f"{args.output_dir}/ppo"
    for override in args.overrides:  # each override took effect (not only parsed)
        key, value = override.split("=", 1)
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == yaml.safe_load(value), override


def test_the_repository_is_the_pods_working_directory(job):
    """The config's paths (configs/, data/, assets/) are relative: every Ray container starts in the repository,
    unless the runtime environment ships it as its working_dir."""
    runtime_env = yaml.safe_load(job["spec"].get("runtimeEnvYAML") or "{}") or {}
    if "working_dir" not in runtime_env:
        dirs = {c.get("workingDir") for _, c in ray_containers(job)}
        assert len(dirs) == 1 and None not in dirs, dirs


def test_credentials_come_from_the_secret_only(job):
    for where, container in every_container(job):
        for env in container.get("env", []):
            if env["name"] in CREDENTIALS:
                assert "value" not in env, f"{where}: {env['name']} written in the manifest"
                assert env["valueFrom"]["secretKeyRef"]["name"], where
    for where, container in ray_containers(job):  # the driver on the head and the actors on the workers write
        from_secret = {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        keyed = {e["name"] for e in container.get("env", []) if e.get("valueFrom", {}).get("secretKeyRef", {})
                 .get("name") == SECRET}
        assert SECRET in from_secret or {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keyed, where


def test_no_literal_credential_anywhere_in_the_manifest(job):
    def walk(node, path):
        if isinstance(node, dict):
            if node.get("name") in CREDENTIALS:
                assert "value" not in node, f"{path}: {node['name']} has a literal value"
            for k, v in node.items():
                assert not (k in CREDENTIALS and isinstance(v, str)), f"{path}.{k}: a literal credential"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(job, "")
    text = open(MANIFEST, encoding="utf-8").read()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id in the manifest"


def test_the_runtime_env_parses_and_holds_no_credentials(job):
    text = job["spec"].get("runtimeEnvYAML")
    if text is None:
        return
    runtime_env = yaml.safe_load(text)
    assert isinstance(runtime_env, dict), "runtimeEnvYAML is a YAML mapping"
    env_vars = runtime_env.get("env_vars") or {}
    assert all(isinstance(v, str) for v in env_vars.values()), "Ray's env_vars are strings"
    assert not [k for k in env_vars if k.upper().startswith("AWS_") and k.upper() != "AWS_REGION"], env_vars
    assert not any(name in text for name in CREDENTIALS), "credentials in runtimeEnvYAML"


def test_one_image_of_the_projects_ray_everywhere(job):
    cluster = job["spec"]["rayClusterSpec"]
    installed = importlib.metadata.version("ray")  # the project's Ray, without importing it
    assert cluster["rayVersion"] == installed
    images = {c["image"] for _, c in every_container(job)}
    assert len(images) == 1, f"head and workers run different images: {images}"
    assert installed in images.pop()
    # the image's build, in the manifest's comments, starts from the same Ray
    bases = re.findall(r"FROM rayproject/ray:(\S+)", open(MANIFEST, encoding="utf-8").read())
    assert bases and all(b.startswith(f"{installed}-py3") for b in bases), bases


def test_the_pages_kubectl_commands_name_this_manifest(job):
    text = open(PAGE, encoding="utf-8").read()
    section = text[text.index("## KubeRay"):]
    lines = " ".join(section.replace("\\\n", " ").splitlines())
    assert "kubectl apply -f examples/kuberay/rayjob.yaml" in lines
    secret = re.search(r"kubectl create secret generic (\S+)((?: --from-literal=\w+=\S+)+)", lines)
    assert secret and secret.group(1) == SECRET
    keys = set(re.findall(r"--from-literal=(\w+)=", secret.group(2)))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
    assert not re.search(r"--from-literal=AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID)=(?!\.\.\.)", lines)
    name = job["metadata"]["name"]
    assert f"kubectl get rayjob {name}" in lines and f"kubectl logs -f job/{name}" in lines
    assert parsed(job).output_dir in section  # where the results land
