"""``cluster.yaml`` checked offline: against the schema shipped in the ``ray`` wheel, through
Ray's own preparation and validation (what ``ray up`` runs before it calls AWS), and for the
placement the job configs rely on: data tasks fit only the CPU pool, training workers only
the GPU pools, the head runs nothing, and the dashboard and job API are not exposed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raylm.config import load
from raylm.curate.pipeline import CurateConfig
from raylm.data.prepare import PrepareConfig
from raylm.train.config import load_train_config
from raylm.train.trainer import worker_resources

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs" / "configs"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def fits(demand: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0) >= v for k, v in demand.items() if v > 0)


def test_valid_for_rays_schema_and_validation(cluster):
    jsonschema.validate(cluster, _schema())
    validate_config(prepare_config(copy.deepcopy(cluster)))  # defaults merged, then Ray's checks


def test_a_broken_config_is_rejected(cluster):
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu-spot"]["resources"]["GPU"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(cluster)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(bad))


def test_pools(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "--num-cpus=0" in " ".join(cluster["head_start_ray_commands"])
    workers = {k: v for k, v in types.items() if k != cluster["head_node_type"]}
    assert all(v["min_workers"] == 0 and v["max_workers"] > 0 for v in workers.values())  # 0..N
    spot = [k for k, v in workers.items() if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    on_demand = [k for k, v in workers.items() if v["resources"].get("GPU") and k not in spot]
    assert spot == ["gpu-spot"] and on_demand == ["gpu-od"]
    assert types["gpu-spot"]["priority"] > types["gpu-od"]["priority"]  # spot first, on-demand falls back
    assert types["gpu-spot"]["resources"] == types["gpu-od"]["resources"]
    assert any("pip install" in c and "~/raylm" in c for c in cluster["setup_commands"])
    assert cluster["file_mounts"]["~/raylm"] == "."


def test_data_tasks_land_on_the_cpu_pool_and_training_on_gpus(cluster):
    nodes = {k: v["resources"] for k, v in cluster["available_node_types"].items()}
    curate = load(CurateConfig, JOBS / "curate.yaml")
    prepare = load(PrepareConfig, JOBS / "prepare.yaml")
    for cfg in (curate, prepare):
        demand = {"CPU": 1, **cfg.ray.remote_args["resources"]}
        assert [k for k, r in nodes.items() if fits(demand, r)] == ["cpu"]
    train = load_train_config(JOBS / "pretrain.yaml")
    demand = worker_resources(train)
    assert [k for k, r in nodes.items() if fits(demand, r)] == ["gpu-spot", "gpu-od"]
    assert train.max_failures > 0 and train.storage_path.startswith("s3://")
    # the tiny CPU config (local runs, tests) asks for no GPU
    assert "GPU" not in worker_resources(load_train_config(JOBS / "train_tiny.yaml"))


def test_dashboard_and_job_api_are_not_public(cluster):
    start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    assert not cluster["provider"]["security_group"].get("IpPermissions")  # only Ray's SSH + intra-cluster
    for cmds in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert all("RAY_AUTH_MODE=token" in c for c in cluster[cmds])
    assert "~/.ray/auth_token" in cluster["file_mounts"]
