"""Rehearse a cloud burst on one machine: cluster.yaml's worker types on Ray's fake multi-node
provider, with token authentication on, the tiny curriculum across two launched worker nodes,
and scale-down.

    python -m aiprod.ops.rehearsal --out out/rehearsal      # prints one JSON report

The head starts with `--autoscaling-config` like `ray up` does; the autoscaler (v2, as `ray up`
runs it) launches fake worker nodes (raylets on this machine) when the job's demand cannot fit,
prefers the spot types by their priority, and removes the nodes once idle. The head has 0 CPUs,
as on AWS, so work can only run on launched workers. The whole cluster runs in its own process
group and is ended by that group's id; no `ray stop`, which would end every Ray on the machine.
The job and the token checks are drivers of their own: `aiprod.ops.rehearsal_job` and
`aiprod.ops.token_probe`, each run with `python -m` against the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiprod.ops.cluster_config import DEFAULT_CLUSTER_YAML, ROOT, load_cluster_yaml

FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider names the head's type so
REHEARSAL_TOKEN = "aiprod-rehearsal-token-0123456789abcdef"  # a throwaway token for a loopback cluster
JOB_MODULE = "aiprod.ops.rehearsal_job"
TOKEN_PROBE_MODULE = "aiprod.ops.token_probe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_cluster_config(
    cluster: dict[str, Any],
    gcs_address: str,
    worker_cpus: int,
    max_per_type: int,
    idle_timeout_s: float,
) -> dict[str, Any]:
    """cluster.yaml's worker types (names, priorities, labels, min 0) as fake nodes of
    `worker_cpus` CPUs each, at most `max_per_type` of a type."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    types: dict[str, Any] = {
        FAKE_HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0}
    }
    for name, node_type in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        types[name] = {
            "resources": {"CPU": worker_cpus},
            "node_config": {},
            "min_workers": node_type.get("min_workers", 0),
            "max_workers": min(node_type.get("max_workers", max_per_type), max_per_type),
            "priority": node_type.get("priority", 0),
            "labels": node_type.get("labels", {}),
        }
    return {
        "cluster_name": f"{cluster['cluster_name']}-rehearsal",
        "max_workers": max_per_type * (len(types) - 1),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "external",
            "module": FAKE_PROVIDER,
            "gcs_address": gcs_address,
            "launch_multiple": True,
            "head_node_id": FAKE_HEAD_NODE_ID,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeCluster:
    """A head started like `ray up` starts it, in its own process group, token auth on."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str]):
        self.config = config
        self.workdir = workdir
        self.port = int(config["provider"]["gcs_address"].rsplit(":", 1)[1])
        self.address = config["provider"]["gcs_address"]
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.temp_dir: str | None = None

    def start(self, timeout_s: float) -> None:
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

        config_path = self.workdir / "autoscaling.yaml"
        config_path.write_text(json.dumps(self.config))
        env = dict(self.env)
        env.update({
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
            "RAY_NODE_TYPE_NAME": FAKE_HEAD_TYPE,
        })
        self.temp_dir = tempfile.mkdtemp(prefix="rayr", dir="/tmp")  # short: unix socket paths
        cmd = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            f"--port={self.port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
            f"--autoscaling-config={config_path}", f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
        ]
        log = open(self.workdir / "head.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray head exited with {self.proc.returncode}; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ray head did not listen on {self.port} within {timeout_s}s")

    def stop(self, grace_s: float = 10.0) -> None:
        """End the head's process group (head, autoscaler, fake worker nodes, their workers)."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the head's pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(1.0)  # children of the group finish after the head
        self.proc = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def run_driver(address: str, env: dict[str, str], module: str, timeout_s: float) -> dict[str, Any]:
    """Run a driver module against the cluster in a fresh process; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, "-m", module, address], env=env, capture_output=True,
                         text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"driver failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rehearse(
    cluster_yaml: str | Path = DEFAULT_CLUSTER_YAML,
    workdir: str | Path | None = None,
    worker_cpus: int = 3,  # logical: a training worker + the data pipeline's tasks
    max_per_type: int = 2,
    idle_timeout_s: float = 10.0,
    up_timeout_s: float = 480.0,
    down_timeout_s: float = 180.0,
) -> dict[str, Any]:
    cluster = load_cluster_yaml(cluster_yaml)
    work = Path(workdir or tempfile.mkdtemp(prefix="aiprod-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    token_file = work / "auth_token"
    token_file.write_text(REHEARSAL_TOKEN)
    token_file.chmod(0o600)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    base_env["RAY_USAGE_STATS_ENABLED"] = "0"
    auth_env = {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    address = f"127.0.0.1:{free_port()}"
    config = fake_cluster_config(cluster, address, worker_cpus, max_per_type, idle_timeout_s)
    head = FakeCluster(config, work, auth_env)
    report: dict[str, Any] = {"cluster_yaml": str(cluster_yaml), "address": address,
                              "idle_timeout_s": idle_timeout_s}
    t0 = time.monotonic()
    try:
        head.start(timeout_s=120)
        report["head_start_s"] = time.monotonic() - t0
        job_env = {**auth_env, "REHEARSAL_UP_TIMEOUT_S": str(up_timeout_s),
                   "REHEARSAL_DOWN_TIMEOUT_S": str(down_timeout_s), "REHEARSAL_WORKDIR": str(work),
                   "REHEARSAL_ROOT": str(ROOT)}
        report["job"] = run_driver(address, job_env, JOB_MODULE, up_timeout_s + down_timeout_s + 120)
        report["right_token"] = run_driver(address, auth_env, TOKEN_PROBE_MODULE, 120)
        wrong = work / "wrong_token"
        wrong.write_text("not-the-cluster-token-0123456789abcdef")
        report["wrong_token"] = run_driver(
            address, {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)},
            TOKEN_PROBE_MODULE, 120)
    finally:
        head.stop()
    report["total_s"] = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiprod.ops.rehearsal", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--cluster-yaml", default=str(DEFAULT_CLUSTER_YAML))
    parser.add_argument("--out", help="work dir (logs, report.json); default: a temp dir")
    parser.add_argument("--idle-timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    report = rehearse(args.cluster_yaml, args.out, idle_timeout_s=args.idle_timeout_s)
    if args.out:
        from aiprod.storage import write_text_atomic

        write_text_atomic(Path(args.out) / "report.json", json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
