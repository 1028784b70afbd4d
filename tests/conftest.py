"""Shared fixtures: one real local Ray cluster per session and a real S3 endpoint (moto server).

The S3 endpoint is started before Ray so that every Ray worker inherits `AWS_ENDPOINT_URL` and
the fake credentials. Use `s3_uri` for a fresh `s3://` prefix per test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "aiprod-test"
METRICS_REPORT_MS = 2000  # how often workers push metrics to the agent (Ray's default: 10 s)


def load_job(name: str):
    """jobs/NAME.py as a module (the jobs are scripts, not a package), to call its main(argv)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on port {port} within {timeout}s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a free loopback port, wired through AWS_ENDPOINT_URL, with a bucket."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(port, proc)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_uri(s3_endpoint) -> str:
    """A fresh, empty s3:// prefix in the test bucket."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, tmp_path_factory):
    """One real local Ray cluster for the whole session (started after S3 so workers see it)."""
    import ray

    from aiprod.ray_local import local_runtime_env

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,  # logical CPUs: 2 train workers + Ray Data + Serve on 2 real cores
            object_store_memory=1_500_000_000,
            include_dashboard=False,
            runtime_env=local_runtime_env(),  # as the jobs' own local clusters
            log_to_driver=True,
            _metrics_export_port=free_port(),  # Ray's metrics agent, scraped by tests/test_monitoring.py
            _system_config={"metrics_report_interval_ms": METRICS_REPORT_MS},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_metrics_url(ray_cluster) -> str:
    """The Prometheus endpoint of the session cluster's metrics agent."""
    port = ray_cluster._private.worker.global_worker.node.metrics_export_port
    return f"http://127.0.0.1:{port}/metrics"


@pytest.fixture(scope="session")
def tiny_config():
    from aiprod.config import load_config

    return load_config("tiny")


@pytest.fixture(scope="session")
def single_process_group():
    """One gloo group of one rank for the session: in-process DeepSpeed engines (DeepSpeed caches
    its groups, so the group is never re-created)."""
    import torch.distributed as dist

    env = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine OpenMP's spinning
    threads slowed some tests ~30x; restored afterwards. Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
