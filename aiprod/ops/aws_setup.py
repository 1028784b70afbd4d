"""Make a cluster's AWS side: its security group and least-privilege instance profiles.

This exists because Ray's AWS launcher, when it has to create the security group itself, opens
SSH to 0.0.0.0/0 and gives the head EC2 and S3 full access. cluster.yaml names a group and two
instance profiles made here instead, so neither default is ever used.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from aiprod.ops.cluster_config import API_KEY_PATH, CLUSTER_TAG, DEFAULT_BUCKETS, SERVE_PORT, CloudError
from aiprod.ops.iam_policies import EC2_TRUST, role_policies
from aiprod.ops.security_rules import world_open_rules


def parse_cidr(cidr: str, what: str) -> str:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise CloudError(f"{what}: {cidr!r} is not a CIDR (e.g. 203.0.113.7/32): {exc}") from None
    if net.prefixlen == 0:
        raise CloudError(f"{what}: {cidr} opens the port to the whole internet; give your own address/32")
    return str(net)


def _find_or_create_group(ec2: Any, vpc_id: str, group_name: str, cluster_name: str) -> tuple[str, list]:
    """(group id, its ingress rules)."""
    found = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [group_name]}]
    )["SecurityGroups"]
    if found:
        return found[0]["GroupId"], found[0].get("IpPermissions", [])
    group_id = ec2.create_security_group(
        GroupName=group_name,
        Description=f"AIPROD Ray cluster {cluster_name}: intra-cluster, SSH/Serve from chosen CIDRs",
        VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group",
                            "Tags": [{"Key": CLUSTER_TAG, "Value": cluster_name}]}],
    )["GroupId"]
    return group_id, []


def _rule_present(rule: dict[str, Any], existing: list[dict[str, Any]], group_id: str) -> bool:
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
    group_id, existing = _find_or_create_group(ec2, vpc_id, group_name, cluster_name)
    world = [r for r in existing if world_open_rules([r])]
    if world:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=world)

    wanted = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}]
    for cidr, port, what in ((ssh_cidr, 22, "SSH"), (serve_cidr, serve_port, "Serve")):
        if cidr:
            wanted.append({"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                           "IpRanges": [{"CidrIp": cidr, "Description": f"AIPROD {what}"}]})
    missing = [r for r in wanted if not _rule_present(r, existing, group_id)]
    if missing:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=missing)
    return group_id


def ensure_instance_profiles(iam: Any, cluster: dict[str, Any], buckets: list[str]) -> dict[str, str]:
    """Roles + instance profiles for head and workers, policies put inline. Returns name -> ARN."""
    arns = {}
    for name, inline in role_policies(cluster, buckets).items():
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
