"""The invariants that keep a cloud burst safe by default, one short rule each.

A rule takes a `ClusterView` and returns its problems; `security_problems` runs every rule in
`RULES` and an empty list means all hold. To add an invariant, write a rule and list it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiprod.ops.cluster_config import (
    API_KEY_ENV,
    API_KEY_PATH,
    HEAD_PORTS,
    METRICS_PORT,
    RAY_DEFAULT_PROFILE,
    TOKEN_PATH,
    WORLD,
)

START_KEYS = ("head_start_ray_commands", "worker_start_ray_commands")


@dataclass(frozen=True)
class ClusterView:
    """A cluster.yaml with the parts the rules read picked out."""

    cluster: dict[str, Any]
    ray_version: str  # constraints.txt's pin
    text: str  # every key and string value, one a line
    provider: dict[str, Any]
    types: dict[str, Any]
    head_type: str | None
    mounts: dict[str, Any]

    @classmethod
    def of(cls, cluster: dict[str, Any], ray_version: str) -> ClusterView:
        return cls(cluster, ray_version, "\n".join(_strings(cluster)), cluster.get("provider") or {},
                   cluster.get("available_node_types") or {}, cluster.get("head_node_type"),
                   cluster.get("file_mounts") or {})

    def start_commands(self, key: str) -> list[str]:
        return [c for c in self.cluster.get(key) or [] if "ray start" in c]

    def workers(self) -> dict[str, Any]:
        return {name: t for name, t in self.types.items() if name != self.head_type}


def _strings(node: Any) -> list[str]:
    """Every key and string value in the tree, unquoted (so patterns see what the shell sees)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *_strings(v)]]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _node_config(node_type: dict[str, Any]) -> dict[str, Any]:
    return node_type.get("node_config") or {}


def world_open_rules(permissions: list[dict[str, Any]]) -> list[str]:
    """Ingress rules open to 0.0.0.0/0 or ::/0, as `port 22 (SSH)`, `all ports (...)`."""
    found = []
    for rule in permissions or []:
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        if any(c in WORLD for c in cidrs):
            low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
            names = [n for p, n in HEAD_PORTS.items() if low == -1 or low <= p <= high]
            ports = "all ports" if low == -1 else f"port {low}" if low == high else f"ports {low}-{high}"
            found.append(f"{ports} ({', '.join(names) or 'other'})")
    return found


# ------------------------------------------------------------------- token authentication


def provider_is_aws(c: ClusterView) -> list[str]:
    kind = c.provider.get("type")
    return [] if kind == "aws" else [f"provider.type must be aws, got {kind!r}"]


def ray_starts_use_token_auth(c: ClusterView) -> list[str]:
    problems = []
    for key in START_KEYS:
        starts = c.start_commands(key)
        if not starts:
            problems.append(f"{key}: no `ray start` command")
        problems += [f"{key}: `ray start` runs without RAY_AUTH_MODE=token (token auth off)"
                     for cmd in starts if not re.search(r"\bRAY_AUTH_MODE=token\b", cmd)]
    return problems


def no_other_auth_mode(c: ClusterView) -> list[str]:
    if re.search(r"RAY_AUTH_MODE=(?!token\b)", c.text):
        return ["RAY_AUTH_MODE is set to something other than token somewhere"]
    return []


def auth_token_is_mounted(c: ClusterView) -> list[str]:
    problems = []
    if TOKEN_PATH not in c.mounts:
        problems.append(f"file_mounts: {TOKEN_PATH} (the Ray auth token) is not copied to the nodes")
    if "RAY_AUTH_TOKEN=" in c.text:
        problems.append("the Ray auth token is written inline; mount ~/.ray/auth_token instead")
    return problems


# ----------------------------------------------------------------------------- credentials


def no_aws_credentials(c: ClusterView) -> list[str]:
    problems = []
    if "aws_credentials" in c.provider:
        problems.append("provider.aws_credentials holds credentials; nodes use instance profiles")
    if re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", c.text) or re.search(r"aws_secret_access_key", c.text, re.I):
        problems.append("an AWS access key appears in the file")
    return problems


def api_key_is_not_literal(c: ClusterView) -> list[str]:
    if re.search(rf"{API_KEY_ENV}=(?!\"?\$\()", c.text):
        return [f"{API_KEY_ENV} is assigned a literal; read it from {API_KEY_PATH}"]
    return []


# --------------------------------------------------------------------------------- ingress


def security_group_not_world_open(c: ClusterView) -> list[str]:
    group = c.provider.get("security_group") or {}
    return [f"provider.security_group opens {where} to the world (0.0.0.0/0)"
            for where in world_open_rules(group.get("IpPermissions", []))]


def ray_makes_no_default_group(c: ClusterView) -> list[str]:
    """Ray's own group, made when a node type names none, opens SSH to the world."""
    unmanaged = [n for n, t in c.types.items() if "SecurityGroupIds" not in _node_config(t)]
    if unmanaged and not (c.provider.get("security_group") or {}).get("GroupName"):
        return [f"node types {unmanaged} have no security group and provider.security_group.GroupName is "
                "unset: Ray would create its default group with SSH open to 0.0.0.0/0"]
    return []


def dashboard_on_loopback(c: ClusterView) -> list[str]:
    return ["the dashboard listens on all interfaces; use --dashboard-host=127.0.0.1"
            for cmd in c.start_commands("head_start_ray_commands")
            if re.search(r"--dashboard-host[= ]0\.0\.0\.0", cmd)]


def metrics_port_fixed_on_every_node(c: ClusterView) -> list[str]:
    """Every node's metrics agent on METRICS_PORT, the port deploy/prometheus.yml's service discovery
    reaches inside the cluster (the group opens it to no one outside: security_group_not_world_open)."""
    return [f"{key}: `ray start` without --metrics-export-port={METRICS_PORT} (Prometheus scrapes that port)"
            for key in START_KEYS for cmd in c.start_commands(key)
            if not re.search(rf"--metrics-export-port[= ]{METRICS_PORT}\b", cmd)]


def api_key_on_every_node(c: ClusterView) -> list[str]:
    """Serve's API key wired on every node (the Serve port may be opened with setup --serve-cidr)."""
    problems = []
    if API_KEY_PATH not in c.mounts:
        problems.append(f"file_mounts: {API_KEY_PATH} (the Serve API key) is not copied to the nodes")
    for key in START_KEYS:
        problems += [f"{key}: `ray start` runs without {API_KEY_ENV} (Serve API key off)"
                     for cmd in c.start_commands(key) if f"{API_KEY_ENV}=" not in cmd]
    return problems


# -------------------------------------------------------------------- instance identities


def _profile_name(node_type: dict[str, Any]) -> str:
    profile = _node_config(node_type).get("IamInstanceProfile") or {}
    return profile.get("Name") or profile.get("Arn", "").rsplit("/", 1)[-1]


def nodes_have_own_profile_and_imdsv2(c: ClusterView) -> list[str]:
    problems = []
    for name, node_type in c.types.items():
        ident = _profile_name(node_type)
        if not ident:
            problems.append(f"available_node_types.{name}: no IamInstanceProfile")
        elif ident == RAY_DEFAULT_PROFILE:
            problems.append(f"available_node_types.{name}: Ray's default profile has EC2/S3 full access")
        if _node_config(node_type).get("MetadataOptions", {}).get("HttpTokens") != "required":
            problems.append(f"available_node_types.{name}: IMDSv2 not required (MetadataOptions.HttpTokens)")
    return problems


def workers_do_not_share_head_profile(c: ClusterView) -> list[str]:
    head_profile = _profile_name(c.types[c.head_type]) if c.head_type in c.types else None
    return [f"available_node_types.{name}: workers share the head's instance profile"
            for name, node_type in c.workers().items()
            if (ident := _profile_name(node_type)) and ident == head_profile]


# ----------------------------------------------------------------------------- scaling


def workers_scale_to_zero(c: ClusterView) -> list[str]:
    problems = [f"available_node_types.{name}.min_workers must be 0, got {t['min_workers']}"
                for name, t in c.workers().items() if t.get("min_workers", 0) != 0]
    if not c.cluster.get("idle_timeout_minutes"):
        problems.append("idle_timeout_minutes is unset or 0: idle workers would not be removed")
    return problems


def _market(node_type: dict[str, Any]) -> str | None:
    return (_node_config(node_type).get("InstanceMarketOptions") or {}).get("MarketType")


def spot_types_have_on_demand_twins(c: ClusterView) -> list[str]:
    """Each spot type has an on-demand twin (same instance type and resources) of lower priority."""
    problems = []
    for name, node_type in c.types.items():
        if _market(node_type) != "spot":
            continue
        twins = [other for other_name, other in c.types.items()
                 if other_name != name and _market(other) != "spot"
                 and other.get("resources") == node_type.get("resources")
                 and _node_config(other).get("InstanceType") == node_type["node_config"].get("InstanceType")]
        if not twins:
            problems.append(f"available_node_types.{name}: spot type without an on-demand twin")
        elif not all(node_type.get("priority", 0) > t.get("priority", 0) for t in twins):
            problems.append(f"available_node_types.{name}: spot must have a higher priority than its twin")
    return problems


def nodes_install_the_pinned_ray(c: ClusterView) -> list[str]:
    """The same Ray on the nodes as in constraints.txt, installed with the constraints."""
    problems = []
    setup = " ".join(c.cluster.get("setup_commands") or [])
    pins = re.findall(r"ray(?:\[[^\]]*\])?==([0-9][^\s\"']*)", setup)
    if not pins:
        problems.append("setup_commands do not pin ray (`ray[default]==X.Y.Z`)")
    elif any(pin != c.ray_version for pin in pins):
        problems.append(f"setup_commands pin ray {sorted(set(pins))}, constraints.txt has {c.ray_version}")
    if "-c constraints.txt" not in setup:
        problems.append("setup_commands do not install with `-c constraints.txt`")
    return problems


Rule = Callable[[ClusterView], list[str]]
RULES: tuple[Rule, ...] = (
    provider_is_aws,
    ray_starts_use_token_auth,
    no_other_auth_mode,
    auth_token_is_mounted,
    no_aws_credentials,
    api_key_is_not_literal,
    security_group_not_world_open,
    ray_makes_no_default_group,
    dashboard_on_loopback,
    metrics_port_fixed_on_every_node,
    api_key_on_every_node,
    nodes_have_own_profile_and_imdsv2,
    workers_do_not_share_head_profile,
    workers_scale_to_zero,
    spot_types_have_on_demand_twins,
    nodes_install_the_pinned_ray,
)


def security_problems(cluster: dict[str, Any], ray_version: str) -> list[str]:
    """Every rule's problems, in `RULES` order; an empty list means all invariants hold."""
    view = ClusterView.of(cluster, ray_version)
    return [problem for rule in RULES for problem in rule(view)]
