"""Running on a cluster. `pdspace run --address` checks that every node of the Ray cluster sees
the artifacts home: a task pinned to each alive node reads a file the driver has just written
there. On a local Ray (one node) the check passes; a node that cannot see the file (here: the
file removed before the tasks read it) is named in the refusal. Multi-worker units are NCCL DDP
jobs with one GPU per worker (gloo on CPUs)."""
from __future__ import annotations

import socket

import pytest

pytest.importorskip("ray")

from orchestrator import execute  # noqa: E402


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    execute.start_ray(None, tmp_path_factory.mktemp("ray-home"), num_cpus=1)
    yield
    execute.stop_ray()


def test_the_per_node_check_reads_the_token(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("token-1")
    assert execute.read_probe(str(probe), "token-1") is None
    assert "another file" in execute.read_probe(str(probe), "token-2")
    assert "not there" in execute.read_probe(str(tmp_path / "missing"), "token-1")
    assert "cannot be read" in execute.read_probe(str(tmp_path), "token-1")  # a directory


def test_a_local_cluster_sees_its_artifacts_home(local_ray, tmp_path):
    home = tmp_path / "artifacts"
    execute.check_shared_artifacts("unused: ray is up", home)  # passes, leaves nothing behind
    assert list(home.iterdir()) == []
    probe = home / "probe"
    probe.write_text("t")
    assert execute.nodes_not_seeing(probe, "t") == []


def test_a_node_that_cannot_read_the_file_is_named(local_ray, tmp_path):
    probe = tmp_path / ".cluster-check-x"
    probe.write_text("t")
    probe.unlink()  # written by the driver, gone for the node: as on a node without the mount
    missing = execute.nodes_not_seeing(probe, "t")
    assert len(missing) == 1
    node, why = missing[0]
    assert socket.gethostname() in node and "node id" in node and why == "the file is not there"
    message = str(execute.shared_storage_error(tmp_path, probe, missing))
    assert message.startswith(f"node {node} cannot see the artifacts home {tmp_path}")
    assert "PDSPACE_HOME" in message and "\n" not in message


def test_multi_worker_units_use_nccl_with_one_gpu_per_worker_and_gloo_on_cpus():
    torch_config, scaling = execute.ddp_configs({"cpus": 8, "gpus": 1, "workers": 8})
    assert torch_config.backend == "nccl" and torch_config.timeout_s == execute.DDP_TIMEOUT_S  # rank 0 evaluates
    assert scaling.num_workers == 8 and scaling.use_gpu and scaling.resources_per_worker == {"CPU": 8, "GPU": 1}
    torch_config, scaling = execute.ddp_configs({"cpus": 1, "gpus": 0, "workers": 2})
    assert torch_config.backend == "gloo" and not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1}
