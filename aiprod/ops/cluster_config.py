"""cluster.yaml: reading it, checking it against the installed Ray's schema, the Ray version
constraints.txt pins, the instance profiles it names, and the names both checks and setup share."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLUSTER_YAML = ROOT / "cluster.yaml"
DEFAULT_CONSTRAINTS = ROOT / "constraints.txt"
DEFAULT_BUCKETS = ("aiprod-data", "aiprod-runs", "aiprod-registry")
WORLD = ("0.0.0.0/0", "::/0")
HEAD_PORTS = {22: "SSH", 6379: "GCS", 8265: "dashboard", 10001: "Ray client", 8000: "Serve", 8080: "Ray metrics"}
SERVE_PORT = 8000
METRICS_PORT = 8080  # every node's Ray metrics agent (ray start --metrics-export-port), scraped by Prometheus
TOKEN_PATH = "~/.ray/auth_token"
API_KEY_PATH = "~/.aiprod/api_key"
API_KEY_ENV = "AIPROD_API_KEY"
RAY_DEFAULT_PROFILE = "ray-autoscaler-v1"  # Ray's own: AmazonEC2FullAccess + AmazonS3FullAccess
CLUSTER_TAG = "ray-cluster-name"  # ray.autoscaler.tags.TAG_RAY_CLUSTER_NAME


class CloudError(RuntimeError):
    """A problem with the cloud setup, with a message that says what to do."""


def load_cluster_yaml(path: str | Path = DEFAULT_CLUSTER_YAML) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CloudError(f"cluster config: cannot read {path}: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise CloudError(f"cluster config: {path} must hold a mapping at the top")
    return data


def schema_errors(cluster: dict[str, Any]) -> list[str]:
    """Errors against the cluster-config schema shipped with the installed Ray."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"schema: {'.'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message}"
        for err in sorted(validator.iter_errors(cluster), key=lambda e: list(e.absolute_path))
    ]


def pinned_ray_version(constraints: str | Path = DEFAULT_CONSTRAINTS) -> str:
    for line in Path(constraints).read_text().splitlines():
        match = re.match(r"\s*ray(?:\[[^\]]*\])?\s*==\s*([^\s#;]+)", line)
        if match:
            return match.group(1)
    raise CloudError(f"{constraints} pins no ray version (expected a line `ray==X.Y.Z`)")


def instance_profile_names(cluster: dict[str, Any]) -> tuple[str, str]:
    """(head profile, worker profile) names from cluster.yaml."""
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]
    workers = {
        t["node_config"]["IamInstanceProfile"]["Name"]
        for n, t in types.items() if n != cluster["head_node_type"]
    }
    if len(workers) != 1:
        raise CloudError(f"cluster config: worker node types use several profiles {sorted(workers)}")
    return head, workers.pop()
