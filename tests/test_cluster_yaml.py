"""cluster.yaml: the installed Ray's schema, the security invariants (and that the checker fails
on a YAML that breaks them), the IAM policy files, and the AWS setup against moto's EC2/IAM with
Ray's own AWS bootstrap."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from aiprod.ops import aws_setup, cluster_config, iam_policies, security_rules
from aiprod.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cluster() -> dict:
    return cluster_config.load_cluster_yaml(ROOT / "cluster.yaml")


@pytest.fixture(scope="module")
def ray_version() -> str:
    return cluster_config.pinned_ray_version(ROOT / "constraints.txt")


def test_cluster_yaml_passes_the_installed_rays_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    assert cluster_config.schema_errors(cluster) == []
    validate_config(prepare_config(copy.deepcopy(cluster)))  # Ray's own check, as `ray up` runs it


def test_schema_check_catches_unknown_keys(cluster):
    cluster["head_node_typo"] = "head"
    cluster["available_node_types"]["gpu24_spot"]["resources"]["GPU"] = 0.5
    errors = cluster_config.schema_errors(cluster)
    assert any("head_node_typo" in e for e in errors)
    assert any("gpu24_spot.resources.GPU" in e for e in errors)


def test_security_invariants_hold(cluster, ray_version):
    assert security_rules.security_problems(cluster, ray_version) == []
    assert ray_version == __import__("ray").__version__  # the venv runs the pinned Ray too


def test_cluster_yaml_shape(cluster):
    types = cluster["available_node_types"]
    workers = {n: t for n, t in types.items() if n != cluster["head_node_type"]}
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    assert all(t["min_workers"] == 0 for t in workers.values())
    gpus = {t["resources"]["GPU"] for t in workers.values()}
    assert gpus == {1, 8}, "a single-GPU type and an 8-GPU type"
    spot = [n for n, t in workers.items() if t["node_config"].get("InstanceMarketOptions")]
    assert len(spot) == 2 and len(workers) == 4
    assert cluster["idle_timeout_minutes"] > 0
    assert cluster["file_mounts"]["~/aiprod"] == "."
    assert any("bash scripts/system_deps.sh" in c for c in cluster["setup_commands"])


def test_every_node_can_sign_with_the_configured_c2pa_keys(cluster):
    """The cluster preset signs with env:AIPROD_C2PA_CERT / env:AIPROD_C2PA_KEY: every raylet has
    them, pointing at files `ray up` copies from the operator's ~/.aiprod/c2pa/."""
    from aiprod.config import load_config

    prov = load_config("cluster").provenance
    assert (prov.cert, prov.key) == ("env:AIPROD_C2PA_CERT", "env:AIPROD_C2PA_KEY")
    mounts = cluster["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster[key] if "ray start" in c)
        for var in ("AIPROD_C2PA_CERT", "AIPROD_C2PA_KEY"):
            path = start.split(f"{var}=", 1)[1].split(";", 1)[0].split()[0]
            assert mounts.get(path) == path, f"{key}: {var}={path} is not a file ray up copies"


def _set(cluster, path, value):
    node = cluster
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _world(port, v6=False):
    ranges = {"Ipv6Ranges": [{"CidrIpv6": "::/0"}]} if v6 else {"IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    return [{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **ranges}]


def _strip_token(cmds):
    return [c.replace("RAY_AUTH_MODE=token ", "") for c in cmds]


MUTATIONS = {
    "dashboard open to the world": (
        lambda c: _set(c, ["provider", "security_group", "IpPermissions"], _world(8265)),
        "port 8265 (dashboard) to the world"),
    "ssh open to the world over ipv6": (
        lambda c: _set(c, ["provider", "security_group", "IpPermissions"], _world(22, v6=True)),
        "port 22 (SSH) to the world"),
    "every port open to the world": (
        lambda c: _set(c, ["provider", "security_group", "IpPermissions"],
                       [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]),
        "all ports (SSH, GCS, dashboard, Ray client, Serve, Ray metrics)"),
    "serve open to the world": (
        lambda c: _set(c, ["provider", "security_group", "IpPermissions"], _world(8000)),
        "port 8000 (Serve) to the world"),
    "metrics open to the world": (
        lambda c: _set(c, ["provider", "security_group", "IpPermissions"], _world(8080)),
        "port 8080 (Ray metrics) to the world"),
    "metrics agent on a random port": (
        lambda c: _set(c, ["worker_start_ray_commands", 1],
                       c["worker_start_ray_commands"][1].replace(" --metrics-export-port=8080", "")),
        "worker_start_ray_commands: `ray start` without --metrics-export-port=8080"),
    "head without token auth": (
        lambda c: _set(c, ["head_start_ray_commands"], _strip_token(c["head_start_ray_commands"])),
        "head_start_ray_commands: `ray start` runs without RAY_AUTH_MODE=token"),
    "workers without token auth": (
        lambda c: _set(c, ["worker_start_ray_commands"], _strip_token(c["worker_start_ray_commands"])),
        "worker_start_ray_commands: `ray start` runs without RAY_AUTH_MODE=token"),
    "token auth disabled": (
        lambda c: c["worker_start_ray_commands"].append("RAY_AUTH_MODE=disabled ray status"),
        "RAY_AUTH_MODE is set to something other than token"),
    "token not mounted": (lambda c: c["file_mounts"].pop("~/.ray/auth_token"), "auth token) is not copied"),
    "token inline": (
        lambda c: c["setup_commands"].append("echo RAY_AUTH_TOKEN=abc >> ~/.bashrc"), "written inline"),
    "ray's default security group": (
        lambda c: c["provider"].pop("security_group"), "SSH open to 0.0.0.0/0"),
    "dashboard on all interfaces": (
        lambda c: _set(c, ["head_start_ray_commands", 1],
                       c["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")),
        "dashboard listens on all interfaces"),
    "api key off": (
        lambda c: _set(c, ["worker_start_ray_commands", 1],
                       c["worker_start_ray_commands"][1].replace("AIPROD_API_KEY=", "X=")),
        "without AIPROD_API_KEY"),
    "api key literal": (
        lambda c: _set(c, ["head_start_ray_commands", 1],
                       c["head_start_ray_commands"][1].replace('"$(cat ~/.aiprod/api_key)"', "hunter2")),
        "AIPROD_API_KEY is assigned a literal"),
    "aws credentials in file": (
        lambda c: _set(c, ["provider", "aws_credentials"],
                       {"aws_access_key_id": "AKIAABCDEFGHIJKLMNOP", "aws_secret_access_key": "x"}),
        "provider.aws_credentials holds credentials"),
    "worker without instance profile": (
        lambda c: c["available_node_types"]["gpu24_spot"]["node_config"].pop("IamInstanceProfile"),
        "gpu24_spot: no IamInstanceProfile"),
    "worker with the head's profile": (
        lambda c: _set(c, ["available_node_types", "gpu8x_ondemand", "node_config", "IamInstanceProfile"],
                       {"Name": "aiprod-head"}),
        "gpu8x_ondemand: workers share the head's instance profile"),
    "ray's default profile": (
        lambda c: _set(c, ["available_node_types", "head", "node_config", "IamInstanceProfile"],
                       {"Name": "ray-autoscaler-v1"}),
        "Ray's default profile has EC2/S3 full access"),
    "imdsv1 allowed": (
        lambda c: c["available_node_types"]["gpu24_spot"]["node_config"].pop("MetadataOptions"),
        "gpu24_spot: IMDSv2 not required"),
    "workers never scale to zero": (
        lambda c: _set(c, ["available_node_types", "gpu24_ondemand", "min_workers"], 1),
        "gpu24_ondemand.min_workers must be 0"),
    "no idle timeout": (lambda c: c.pop("idle_timeout_minutes"), "idle_timeout_minutes is unset"),
    "spot without fallback": (
        lambda c: c["available_node_types"].pop("gpu24_ondemand"), "gpu24_spot: spot type without an on-demand twin"),
    "on-demand preferred": (
        lambda c: _set(c, ["available_node_types", "gpu8x_ondemand", "priority"], 20),
        "gpu8x_spot: spot must have a higher priority"),
    "other ray version": (
        lambda c: _set(c, ["setup_commands"], [s.replace("ray[default]==2.60.0", "ray[default]==2.59.0")
                                               for s in c["setup_commands"]]),
        "constraints.txt has"),
    "ray not pinned": (
        lambda c: _set(c, ["setup_commands"], [s.replace(' "ray[default]==2.60.0"', "")
                                               for s in c["setup_commands"]]),
        "do not pin ray"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_checker_fails_on_a_broken_copy(cluster, ray_version, name):
    mutate, expected = MUTATIONS[name]
    assert security_rules.security_problems(cluster, ray_version) == []
    mutate(cluster)
    problems = security_rules.security_problems(cluster, ray_version)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("name", ["dashboard open to the world", "head without token auth"])
def test_check_cli_exits_nonzero_on_a_broken_file(cluster, tmp_path, name):
    MUTATIONS[name][0](cluster)
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(cluster))
    cmd = [sys.executable, "-m", "aiprod.ops.cloud", "check"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    good = subprocess.run(cmd + [str(ROOT / "cluster.yaml")], env=env, capture_output=True, text=True)
    bad = subprocess.run(cmd + [str(broken)], env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 1 and MUTATIONS[name][1] in bad.stderr


def test_policy_files_match_the_generator_and_cover_only_project_buckets(cluster):
    worker = json.loads((ROOT / "docs/iam-policy.json").read_text())
    head = json.loads((ROOT / "docs/iam-policy-head.json").read_text())
    assert worker == iam_policies.bucket_policy(cluster_config.DEFAULT_BUCKETS)
    assert head == iam_policies.head_policy(cluster["cluster_name"], "aiprod-worker")
    s3_resources = [r for st in worker["Statement"] for r in st["Resource"]]
    assert s3_resources and all(r.startswith("arn:aws:s3:::aiprod-") for r in s3_resources)
    assert all(a.startswith("s3:") for st in worker["Statement"] for a in st["Action"])
    # The cluster preset's S3 locations are inside the policy's buckets.
    cfg = load_config("cluster")
    for uri in (cfg.train.storage, cfg.registry.root):
        assert uri.split("/")[2] in cluster_config.DEFAULT_BUCKETS, uri
    # The head may end instances only when they carry this cluster's tag.
    ending = [st for st in head["Statement"] if "ec2:TerminateInstances" in st["Action"]]
    assert ending and all(st["Condition"]["StringEquals"] == {"ec2:ResourceTag/ray-cluster-name": "aiprod"}
                          for st in ending)


def test_setup_rejects_world_and_bad_cidrs():
    for cidr in ("0.0.0.0/0", "::/0"):
        with pytest.raises(cluster_config.CloudError, match="whole internet"):
            aws_setup.parse_cidr(cidr, "--ssh-cidr")
    with pytest.raises(cluster_config.CloudError, match="not a CIDR"):
        aws_setup.parse_cidr("my-laptop", "--ssh-cidr")
    assert aws_setup.parse_cidr("203.0.113.7", "--ssh-cidr") == "203.0.113.7/32"


def test_serve_opt_in_requires_the_api_key(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(cluster_config.CloudError, match="no API key"):
        aws_setup.setup(cluster, "203.0.113.7/32", serve_cidr="198.51.100.0/24")


def _isolated(cluster: dict) -> dict:
    """A copy with its own cluster/group name, so tests sharing one moto server do not meet."""
    tag = uuid.uuid4().hex[:8]
    out = copy.deepcopy(cluster)
    out["cluster_name"] = f"aiprod-{tag}"
    out["provider"]["security_group"]["GroupName"] = f"aiprod-ray-{tag}"
    return out


def _ingress(group_name: str) -> list[dict]:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [group_name]}])
    return [rule for g in groups["SecurityGroups"] for rule in g["IpPermissions"]]


def _ray_bootstrap(cluster: dict, tmp_path: Path) -> dict:
    """Ray's own AWS bootstrap (what `ray up` runs before launching) against moto, in a child
    process with its own HOME: it writes the SSH key pair it creates to ~/.ssh."""
    path = tmp_path / f"{cluster['cluster_name']}.json"
    path.write_text(json.dumps(cluster))
    script = (
        "import json, sys\n"
        "from ray.autoscaler._private.commands import _bootstrap_config\n"
        "cfg = _bootstrap_config(json.load(open(sys.argv[1])), no_config_cache=True)\n"
        "print(json.dumps({n: t['node_config'].get('SecurityGroupIds') "
        "for n, t in cfg['available_node_types'].items()}))\n"
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_setup_on_moto_then_rays_bootstrap_opens_nothing_to_the_world(cluster, s3_endpoint, tmp_path):
    cluster = _isolated(cluster)
    group_name = cluster["provider"]["security_group"]["GroupName"]
    result = aws_setup.setup(cluster, "203.0.113.7/32")
    assert aws_setup.setup(cluster, "203.0.113.7/32") == result  # idempotent

    rules = _ingress(group_name)
    assert security_rules.world_open_rules(rules) == []
    ssh = [r for r in rules if r.get("FromPort") == 22]
    assert [r["CidrIp"] for r in ssh[0]["IpRanges"]] == ["203.0.113.7/32"]
    assert not [r for r in rules if r.get("FromPort") in (6379, 8265, 10001, 8000)]
    intra = [r for r in rules if r["IpProtocol"] == "-1"]
    assert intra[0]["UserIdGroupPairs"][0]["GroupId"] == result["security_group"]

    iam = boto3.client("iam", region_name="us-east-1")
    head_policies = iam.list_role_policies(RoleName="aiprod-head")["PolicyNames"]
    worker_policies = iam.list_role_policies(RoleName="aiprod-worker")["PolicyNames"]
    assert sorted(head_policies) == ["aiprod-autoscaler", "aiprod-s3"]
    assert worker_policies == ["aiprod-s3"]  # workers cannot launch or end instances
    assert not iam.list_attached_role_policies(RoleName="aiprod-worker")["AttachedPolicies"]
    profile = iam.get_instance_profile(InstanceProfileName="aiprod-worker")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["aiprod-worker"]

    # Ray's bootstrap finds the group by name and uses it as is, for every node type.
    groups = _ray_bootstrap(cluster, tmp_path)
    assert set(map(tuple, groups.values())) == {(result["security_group"],)}
    assert security_rules.world_open_rules(_ingress(group_name)) == []


def test_without_the_named_group_ray_would_open_ssh_to_the_world(cluster, s3_endpoint, tmp_path):
    """Why cluster.yaml names a pre-made group: Ray's default group allows SSH from 0.0.0.0/0."""
    cluster = _isolated(cluster)
    cluster["provider"].pop("security_group")
    assert any("SSH open to 0.0.0.0/0" in p for p in security_rules.security_problems(
        cluster, cluster_config.pinned_ray_version(ROOT / "constraints.txt")))
    _ray_bootstrap(cluster, tmp_path)
    rules = _ingress(f"ray-autoscaler-{cluster['cluster_name']}")
    assert security_rules.world_open_rules(rules) == ["port 22 (SSH)"]


def test_setup_revokes_world_rules_and_opens_serve_only_on_opt_in(cluster, s3_endpoint, tmp_path, monkeypatch):
    cluster = _isolated(cluster)
    group_name = cluster["provider"]["security_group"]["GroupName"]
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = aws_setup.default_vpc(ec2)
    group_id = ec2.create_security_group(GroupName=group_name, Description="pre-existing", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=_world(8265))

    aws_setup.setup(cluster, None)  # --no-ssh: reach nodes with SSM
    rules = _ingress(group_name)
    assert security_rules.world_open_rules(rules) == [] and not [r for r in rules if r.get("FromPort") == 22]

    (tmp_path / ".aiprod").mkdir()
    (tmp_path / ".aiprod/api_key").write_text("k" * 32)
    monkeypatch.setenv("HOME", str(tmp_path))
    aws_setup.setup(cluster, None, serve_cidr="198.51.100.0/24")
    serve = [r for r in _ingress(group_name) if r.get("FromPort") == cluster_config.SERVE_PORT]
    assert [r["CidrIp"] for r in serve[0]["IpRanges"]] == ["198.51.100.0/24"]
