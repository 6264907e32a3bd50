"""Cluster files checked without launching: Ray's own schema and loader (``ray up`` has no dry
run), safety settings, the RayJob's structure. The launches are in test_cluster_launch.py."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_UP_CONFIGS = ["aws.yaml", "gcp.yaml", "local.yaml"]
ALL_FILES = [*RAY_UP_CONFIGS, "kuberay-rayjob.yaml", "Dockerfile", "wait_for_jobs.py"]


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_passes_rays_schema_and_loader(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(name)
    jsonschema.validate(config, _ray_schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # The head node type exists and the workers can autoscale (or, on-prem, are all listed).
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["max_workers"] >= 2


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_configs_have_cpu_head_and_autoscaling_gpu_workers(name):
    config = _load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_workers = [t for k, t in types.items() if k != config["head_node_type"]]
    assert gpu_workers and all(t["resources"]["GPU"] >= 1 for t in gpu_workers)
    assert all(t["min_workers"] == 0 < t["max_workers"] for t in gpu_workers)


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_installs_the_repo_and_keeps_dashboard_local(name):
    config = _load(name)
    assert config["file_mounts"]["~/lensray"] == "."
    setup = " ".join(
        config["setup_commands"] + config["head_setup_commands"] + config["worker_setup_commands"]
    )
    assert "pip install" in setup and "-e ~/lensray" in setup
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "start" in c)


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_nodes_dump_no_core_and_head_waits_for_the_job_agent(name):
    config = _load(name)
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:  # core dumps can hold the auth token
            assert command.index("ulimit -c 0;") < command.index("ray start"), command
    # `ray start` returns before the job agent is up: the last head command waits for it.
    last = config["head_start_ray_commands"][-1]
    assert "RAY_AUTH_MODE=token python ~/lensray/cluster/wait_for_jobs.py" in last


def test_local_yaml_puts_its_venv_on_the_path_of_every_ssh_command():
    """Ray runs each command, `ray down`'s `ray stop` too, in a login shell that sources
    ~/.bashrc first; the venv must be on PATH there (tests/test_cluster_launch.py runs it)."""
    setup = _load("local.yaml")["setup_commands"]
    assert setup[0] == "test -x ~/lensray-venv/bin/python || python3 -m venv ~/lensray-venv"
    assert """echo 'export PATH="$HOME/lensray-venv/bin:$PATH"' >> ~/.bashrc""" in setup[1]
    assert setup[2].startswith("~/lensray-venv/bin/python -m pip install")


def test_wait_for_jobs_gives_one_line_when_no_head_answers():
    from test_jobs import _free_ports

    dashboard, agent = _free_ports(2)  # nothing listens there
    res = subprocess.run([sys.executable, str(CLUSTER / "wait_for_jobs.py"),
                          f"--dashboard-port={dashboard}", f"--agent-port={agent}",
                          "--timeout=1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith("wait_for_jobs: the Ray head on 127.0.0.1 does not accept jobs")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_rayjob_manifest_structure_and_entrypoint():
    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and head["name"]
    groups = cluster["workerGroupSpecs"]
    assert groups and all({"groupName", "template", "rayStartParams"} <= set(g) for g in groups)
    gpu = groups[0]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cluster["enableInTreeAutoscaling"] is True
    # Token auth: the operator makes the token (a Secret) and gives it to every container and
    # the submitter. The dashboard stays on the pod network, which the operator needs (it
    # reads the job status through the head Service), and never on 0.0.0.0 by our hand.
    assert cluster["authOptions"] == {"mode": "token"}
    for group in [cluster["headGroupSpec"], *groups]:
        assert "0.0.0.0" not in json.dumps(group["rayStartParams"])
    # The entrypoint runs a script that exists in the repository, relative to the working_dir
    # the image installs the repository into.
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python"
    script = argv[1]
    assert (REPO / script).is_file(), script
    assert script == "jobs/run.py"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/lensray"
    assert "/home/ray/lensray" in (CLUSTER / "Dockerfile").read_text()
    # The job's own arguments parse with the real `lensray run` parser.
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["run", *argv[2:]])
    assert args.out == "/data/lensray-out"


_SECRET = re.compile(
    r"(AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|aws_secret_access_key|"
    r"\"type\": \"service_account\"|ghp_[0-9A-Za-z]{20,}|password\s*[:=])",
    re.IGNORECASE,
)


@pytest.mark.parametrize("name", ALL_FILES)
def test_no_secrets_in_cluster_files(name):
    text = (CLUSTER / name).read_text()
    assert not _SECRET.search(text)
    assert "ulimit -c unlimited" not in text
