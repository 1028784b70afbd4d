"""Cloud bursts on AWS: check cluster.yaml's security invariants, make its security group and
least-privilege instance profiles.

    python -m aiprod.cloud check [cluster.yaml]             # schema of the installed Ray + invariants
    python -m aiprod.cloud policy --write docs              # docs/iam-policy.json, iam-policy-head.json
    python -m aiprod.cloud setup --ssh-cidr 203.0.113.7/32  # security group + roles + profiles

`setup` exists because Ray's AWS launcher, when it has to create the security group itself,
opens SSH to 0.0.0.0/0 and gives the head EC2 and S3 full access. cluster.yaml names a group and
two instance profiles made here instead, so neither default is ever used.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLUSTER_YAML = ROOT / "cluster.yaml"
DEFAULT_CONSTRAINTS = ROOT / "constraints.txt"
DEFAULT_BUCKETS = ("aiprod-data", "aiprod-runs", "aiprod-registry")
WORLD = ("0.0.0.0/0", "::/0")
HEAD_PORTS = {22: "SSH", 6379: "GCS", 8265: "dashboard", 10001: "Ray client", 8000: "Serve"}
SERVE_PORT = 8000
TOKEN_PATH = "~/.ray/auth_token"
API_KEY_PATH = "~/.aiprod/api_key"
API_KEY_ENV = "AIPROD_API_KEY"
RAY_DEFAULT_PROFILE = "ray-autoscaler-v1"  # Ray's own: AmazonEC2FullAccess + AmazonS3FullAccess
CLUSTER_TAG = "ray-cluster-name"  # ray.autoscaler.tags.TAG_RAY_CLUSTER_NAME
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


class CloudError(RuntimeError):
    """A problem with the cloud setup, with a message that says what to do."""


# ------------------------------------------------------------------------------ check


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


def _start_commands(cluster: dict[str, Any], key: str) -> list[str]:
    return [c for c in cluster.get(key) or [] if "ray start" in c]


def _world_rules(permissions: list[dict[str, Any]]) -> list[str]:
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


def _strings(node: Any) -> list[str]:
    """Every key and string value in the tree, unquoted (so patterns see what the shell sees)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *_strings(v)]]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def security_problems(cluster: dict[str, Any], ray_version: str) -> list[str]:
    """The invariants that keep a cloud burst safe by default; an empty list means all hold."""
    problems: list[str] = []
    text = "\n".join(_strings(cluster))
    provider = cluster.get("provider") or {}
    types = cluster.get("available_node_types") or {}
    head_type = cluster.get("head_node_type")
    mounts = cluster.get("file_mounts") or {}

    if provider.get("type") != "aws":
        problems.append(f"provider.type must be aws, got {provider.get('type')!r}")

    # Token authentication on every node, the token from a mounted file, never inline.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = _start_commands(cluster, key)
        if not starts:
            problems.append(f"{key}: no `ray start` command")
        for cmd in starts:
            if not re.search(r"\bRAY_AUTH_MODE=token\b", cmd):
                problems.append(f"{key}: `ray start` runs without RAY_AUTH_MODE=token (token auth off)")
    if re.search(r"RAY_AUTH_MODE=(?!token\b)", text):
        problems.append("RAY_AUTH_MODE is set to something other than token somewhere")
    if TOKEN_PATH not in mounts:
        problems.append(f"file_mounts: {TOKEN_PATH} (the Ray auth token) is not copied to the nodes")
    if "RAY_AUTH_TOKEN=" in text:
        problems.append("the Ray auth token is written inline; mount ~/.ray/auth_token instead")

    # No credentials in the file.
    if "aws_credentials" in provider:
        problems.append("provider.aws_credentials holds credentials; nodes use instance profiles")
    if re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text) or re.search(r"aws_secret_access_key", text, re.I):
        problems.append("an AWS access key appears in the file")
    if re.search(rf"{API_KEY_ENV}=(?!\"?\$\()", text):
        problems.append(f"{API_KEY_ENV} is assigned a literal; read it from {API_KEY_PATH}")

    # Ingress: nothing open to the world; Ray must not create its default group (SSH to 0/0).
    group = provider.get("security_group") or {}
    for where in _world_rules(group.get("IpPermissions", [])):
        problems.append(f"provider.security_group opens {where} to the world (0.0.0.0/0)")
    unmanaged = [n for n, t in types.items() if "SecurityGroupIds" not in (t.get("node_config") or {})]
    if unmanaged and not group.get("GroupName"):
        problems.append(
            f"node types {unmanaged} have no security group and provider.security_group.GroupName is "
            "unset: Ray would create its default group with SSH open to 0.0.0.0/0"
        )
    for cmd in _start_commands(cluster, "head_start_ray_commands"):
        if re.search(r"--dashboard-host[= ]0\.0\.0\.0", cmd):
            problems.append("the dashboard listens on all interfaces; use --dashboard-host=127.0.0.1")

    # Serve's API key wired on every node (the Serve port may be opened with setup --serve-cidr).
    if API_KEY_PATH not in mounts:
        problems.append(f"file_mounts: {API_KEY_PATH} (the Serve API key) is not copied to the nodes")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in _start_commands(cluster, key):
            if f"{API_KEY_ENV}=" not in cmd:
                problems.append(f"{key}: `ray start` runs without {API_KEY_ENV} (Serve API key off)")

    # Instance profiles: every node has one; workers never get the head's (or Ray's) rights.
    profiles = {}
    for name, node_type in types.items():
        profile = (node_type.get("node_config") or {}).get("IamInstanceProfile") or {}
        ident = profile.get("Name") or profile.get("Arn", "").rsplit("/", 1)[-1]
        if not ident:
            problems.append(f"available_node_types.{name}: no IamInstanceProfile")
        elif ident == RAY_DEFAULT_PROFILE:
            problems.append(f"available_node_types.{name}: Ray's default profile has EC2/S3 full access")
        profiles[name] = ident
        if (node_type.get("node_config") or {}).get("MetadataOptions", {}).get("HttpTokens") != "required":
            problems.append(f"available_node_types.{name}: IMDSv2 not required (MetadataOptions.HttpTokens)")
    head_profile = profiles.get(head_type)
    for name, ident in profiles.items():
        if name != head_type and ident and ident == head_profile:
            problems.append(f"available_node_types.{name}: workers share the head's instance profile")

    # Scale to zero, and go back to zero when idle.
    for name, node_type in types.items():
        if name != head_type and node_type.get("min_workers", 0) != 0:
            problems.append(f"available_node_types.{name}.min_workers must be 0, got {node_type['min_workers']}")
    if not cluster.get("idle_timeout_minutes"):
        problems.append("idle_timeout_minutes is unset or 0: idle workers would not be removed")

    # Spot with an on-demand twin (same instance type and resources, lower priority).
    def market(t: dict[str, Any]) -> str | None:
        return ((t.get("node_config") or {}).get("InstanceMarketOptions") or {}).get("MarketType")

    for name, node_type in types.items():
        if market(node_type) != "spot":
            continue
        twins = [
            other for other_name, other in types.items()
            if other_name != name and market(other) != "spot"
            and other.get("resources") == node_type.get("resources")
            and (other.get("node_config") or {}).get("InstanceType")
            == node_type["node_config"].get("InstanceType")
        ]
        if not twins:
            problems.append(f"available_node_types.{name}: spot type without an on-demand twin")
        elif not all(node_type.get("priority", 0) > t.get("priority", 0) for t in twins):
            problems.append(f"available_node_types.{name}: spot must have a higher priority than its twin")

    # The same Ray on the nodes as in constraints.txt, installed with the constraints.
    setup = " ".join(cluster.get("setup_commands") or [])
    pins = re.findall(r"ray(?:\[[^\]]*\])?==([0-9][^\s\"']*)", setup)
    if not pins:
        problems.append("setup_commands do not pin ray (`ray[default]==X.Y.Z`)")
    elif any(pin != ray_version for pin in pins):
        problems.append(f"setup_commands pin ray {sorted(set(pins))}, constraints.txt has {ray_version}")
    if "-c constraints.txt" not in setup:
        problems.append("setup_commands do not install with `-c constraints.txt`")
    return problems


def check(path: str | Path = DEFAULT_CLUSTER_YAML, constraints: str | Path = DEFAULT_CONSTRAINTS) -> list[str]:
    cluster = load_cluster_yaml(path)
    return schema_errors(cluster) + security_problems(cluster, pinned_ray_version(constraints))


# ---------------------------------------------------------------------------- policies


def bucket_policy(buckets: tuple[str, ...] | list[str] = DEFAULT_BUCKETS) -> dict[str, Any]:
    """S3 access to the project's buckets only (data, runs/checkpoints, registry)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListProjectBuckets",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
                "Resource": [f"arn:aws:s3:::{b}" for b in buckets],
            },
            {
                # Delete: checkpoint retention, registry pointer swaps, temp-then-rename writes.
                "Sid": "ReadWriteProjectObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
                ],
                "Resource": [f"arn:aws:s3:::{b}/*" for b in buckets],
            },
        ],
    }


def head_policy(cluster_name: str, worker_role: str) -> dict[str, Any]:
    """What Ray's autoscaler on the head needs: launch, tag and end this cluster's workers."""
    own = {"StringEquals": {f"ec2:ResourceTag/{CLUSTER_TAG}": cluster_name}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Describe",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups", "ec2:DescribeImages", "ec2:DescribeKeyPairs",
                ],
                "Resource": "*",
            },
            {
                "Sid": "LaunchTaggedWorkers",
                "Effect": "Allow",
                "Action": "ec2:RunInstances",
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": {"StringEquals": {f"aws:RequestTag/{CLUSTER_TAG}": cluster_name}},
            },
            {
                "Sid": "LaunchResources",
                "Effect": "Allow",
                "Action": "ec2:RunInstances",
                "Resource": [
                    "arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:subnet/*",
                    "arn:aws:ec2:*:*:security-group/*", "arn:aws:ec2:*:*:network-interface/*",
                    "arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:key-pair/*",
                ],
            },
            {
                "Sid": "TagAtLaunch",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
                "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
            },
            {
                "Sid": "ManageOwnWorkers",
                "Effect": "Allow",
                "Action": ["ec2:CreateTags", "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"],
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": own,
            },
            {
                "Sid": "PassWorkerRole",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": f"arn:aws:iam::*:role/{worker_role}",
            },
            {
                "Sid": "ResolveAmiParameters",
                "Effect": "Allow",
                "Action": ["ssm:GetParameters", "ssm:GetParameter"],
                "Resource": "arn:aws:ssm:*::parameter/aws/service/*",
            },
        ],
    }


def _profiles(cluster: dict[str, Any]) -> tuple[str, str]:
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


def write_policies(out_dir: str | Path, cluster: dict[str, Any], buckets: list[str]) -> list[Path]:
    from aiprod.storage import write_text_atomic

    _, worker = _profiles(cluster)
    files = {
        Path(out_dir) / "iam-policy.json": bucket_policy(buckets),
        Path(out_dir) / "iam-policy-head.json": head_policy(cluster["cluster_name"], worker),
    }
    for path, doc in files.items():
        write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return list(files)


# ------------------------------------------------------------------------------- setup


def parse_cidr(cidr: str, what: str) -> str:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise CloudError(f"{what}: {cidr!r} is not a CIDR (e.g. 203.0.113.7/32): {exc}") from None
    if net.prefixlen == 0:
        raise CloudError(f"{what}: {cidr} opens the port to the whole internet; give your own address/32")
    return str(net)


def ensure_security_group(
    ec2: Any,
    vpc_id: str,
    group_name: str,
    cluster_name: str,
    ssh_cidr: str | None = None,
    serve_cidr: str | None = None,
    serve_port: int = SERVE_PORT,
) -> str:
    """Create or update the cluster's group: all traffic inside it, SSH and Serve only from the
    given CIDRs, nothing from 0.0.0.0/0 (world-open rules found on it are revoked). Returns its id."""
    found = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [group_name]}]
    )["SecurityGroups"]
    if found:
        group_id = found[0]["GroupId"]
        existing = found[0].get("IpPermissions", [])
    else:
        group_id = ec2.create_security_group(
            GroupName=group_name,
            Description=f"AIPROD Ray cluster {cluster_name}: intra-cluster, SSH/Serve from chosen CIDRs",
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group",
                                "Tags": [{"Key": CLUSTER_TAG, "Value": cluster_name}]}],
        )["GroupId"]
        existing = []

    world = [r for r in existing if _world_rules([r])]
    if world:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=world)

    wanted = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}]
    for cidr, port, what in ((ssh_cidr, 22, "SSH"), (serve_cidr, serve_port, "Serve")):
        if cidr:
            wanted.append({"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                           "IpRanges": [{"CidrIp": cidr, "Description": f"AIPROD {what}"}]})

    def present(rule: dict[str, Any]) -> bool:
        for have in existing:
            if (have.get("IpProtocol"), have.get("FromPort"), have.get("ToPort")) != (
                rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")
            ):
                continue
            if "UserIdGroupPairs" in rule and any(p.get("GroupId") == group_id for p in have.get("UserIdGroupPairs", [])):
                return True
            if "IpRanges" in rule and any(r.get("CidrIp") == rule["IpRanges"][0]["CidrIp"] for r in have.get("IpRanges", [])):
                return True
        return False

    missing = [r for r in wanted if not present(r)]
    if missing:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=missing)
    return group_id


def ensure_instance_profiles(iam: Any, cluster: dict[str, Any], buckets: list[str]) -> dict[str, str]:
    """Roles + instance profiles for head and workers, policies put inline. Returns name -> ARN."""
    head, worker = _profiles(cluster)
    policies = {
        head: {"aiprod-s3": bucket_policy(buckets),
               "aiprod-autoscaler": head_policy(cluster["cluster_name"], worker)},
        worker: {"aiprod-s3": bucket_policy(buckets)},
    }
    arns = {}
    for name, inline in policies.items():
        try:
            iam.get_role(RoleName=name)
        except iam.exceptions.NoSuchEntityException:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                            Description=f"AIPROD Ray cluster {cluster['cluster_name']}")
        for policy_name, doc in inline.items():
            iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(doc))
        try:
            profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except iam.exceptions.NoSuchEntityException:
            profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        if name not in [r["RoleName"] for r in profile.get("Roles", [])]:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        arns[name] = profile["Arn"]
    return arns


def default_vpc(ec2: Any) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise CloudError("setup: the region has no default VPC; pass --vpc vpc-...")
    return vpcs[0]["VpcId"]


def require_api_key(path: str = API_KEY_PATH) -> None:
    """Serve may be reachable from outside only when the cluster preset checks an API key."""
    from aiprod.config import load_config

    if not load_config("cluster").serve.api_key_env:
        raise CloudError("setup --serve-cidr: the cluster preset has serve.api_key_env unset (API key off)")
    key = Path(path).expanduser()
    if not key.is_file() or not key.read_text().strip():
        raise CloudError(f"setup --serve-cidr: no API key in {path}; make one first (docs/cloud.md, step 1)")


def setup(
    cluster: dict[str, Any],
    ssh_cidr: str | None,
    serve_cidr: str | None = None,
    serve_port: int = SERVE_PORT,
    buckets: list[str] | None = None,
    vpc_id: str | None = None,
) -> dict[str, Any]:
    import boto3

    region = cluster["provider"]["region"]
    ssh = parse_cidr(ssh_cidr, "--ssh-cidr") if ssh_cidr else None
    serve = parse_cidr(serve_cidr, "--serve-cidr") if serve_cidr else None
    if serve:
        require_api_key()
    group_name = (cluster["provider"].get("security_group") or {}).get("GroupName")
    if not group_name:
        raise CloudError("cluster config: provider.security_group.GroupName is unset")
    ec2 = boto3.client("ec2", region_name=region)
    vpc = vpc_id or default_vpc(ec2)
    group_id = ensure_security_group(ec2, vpc, group_name, cluster["cluster_name"], ssh, serve, serve_port)
    profiles = ensure_instance_profiles(boto3.client("iam", region_name=region), cluster,
                                        list(buckets or DEFAULT_BUCKETS))
    return {"vpc": vpc, "security_group": group_id, "instance_profiles": profiles}


# --------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiprod.cloud", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate cluster.yaml (schema + security invariants)")
    p_check.add_argument("cluster_yaml", nargs="?", default=str(DEFAULT_CLUSTER_YAML))
    p_check.add_argument("--constraints", default=str(DEFAULT_CONSTRAINTS))
    p_policy = sub.add_parser("policy", help="print or write the IAM policy documents")
    p_policy.add_argument("--cluster-yaml", default=str(DEFAULT_CLUSTER_YAML))
    p_policy.add_argument("--buckets", nargs="+", default=list(DEFAULT_BUCKETS))
    p_policy.add_argument("--write", metavar="DIR", help="write iam-policy.json + iam-policy-head.json")
    p_setup = sub.add_parser("setup", help="make the security group and instance profiles")
    p_setup.add_argument("--cluster-yaml", default=str(DEFAULT_CLUSTER_YAML))
    access = p_setup.add_mutually_exclusive_group(required=True)
    access.add_argument("--ssh-cidr", help="your address, e.g. 203.0.113.7/32 (never 0.0.0.0/0)")
    access.add_argument("--no-ssh", action="store_true", help="no SSH ingress (reach nodes with SSM)")
    p_setup.add_argument("--serve-cidr", help="opt in: open the Serve port to this CIDR (API key required)")
    p_setup.add_argument("--serve-port", type=int, default=SERVE_PORT)
    p_setup.add_argument("--buckets", nargs="+", default=list(DEFAULT_BUCKETS))
    p_setup.add_argument("--vpc", help="VPC id (default: the region's default VPC)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = check(args.cluster_yaml, args.constraints)
            for problem in problems:
                print(f"cluster config: {problem}", file=sys.stderr)
            print("ok" if not problems else f"{len(problems)} problem(s)")
            return 1 if problems else 0
        cluster = load_cluster_yaml(args.cluster_yaml)
        if args.command == "policy":
            if args.write:
                for path in write_policies(args.write, cluster, args.buckets):
                    print(path)
            else:
                _, worker = _profiles(cluster)
                print(json.dumps({"worker": bucket_policy(args.buckets),
                                  "head": head_policy(cluster["cluster_name"], worker)}, indent=2))
            return 0
        result = setup(cluster, None if args.no_ssh else args.ssh_cidr, args.serve_cidr,
                       args.serve_port, args.buckets, args.vpc)
        print(json.dumps(result, indent=2))
        return 0
    except CloudError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
