"""Cloud bursts on AWS: check cluster.yaml's security invariants, make its security group and
least-privilege instance profiles.

    python -m aiprod.ops.cloud check [cluster.yaml]             # schema of the installed Ray + invariants
    python -m aiprod.ops.cloud policy --write docs              # docs/iam-policy.json, iam-policy-head.json
    python -m aiprod.ops.cloud setup --ssh-cidr 203.0.113.7/32  # security group + roles + profiles

`setup` exists because Ray's AWS launcher, when it has to create the security group itself,
opens SSH to 0.0.0.0/0 and gives the head EC2 and S3 full access. cluster.yaml names a group and
two instance profiles made here instead, so neither default is ever used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aiprod.ops.aws_setup import setup
from aiprod.ops.cluster_config import (
    DEFAULT_BUCKETS,
    DEFAULT_CLUSTER_YAML,
    DEFAULT_CONSTRAINTS,
    SERVE_PORT,
    CloudError,
    load_cluster_yaml,
    pinned_ray_version,
    schema_errors,
)
from aiprod.ops.iam_policies import policy_documents, write_policies
from aiprod.ops.security_rules import security_problems


def check(path: str | Path = DEFAULT_CLUSTER_YAML, constraints: str | Path = DEFAULT_CONSTRAINTS) -> list[str]:
    """Schema errors and broken invariants of a cluster.yaml (empty: all good)."""
    cluster = load_cluster_yaml(path)
    return schema_errors(cluster) + security_problems(cluster, pinned_ray_version(constraints))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aiprod.ops.cloud",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
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
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
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
            print(json.dumps(policy_documents(cluster, args.buckets), indent=2))
        return 0
    result = setup(cluster, None if args.no_ssh else args.ssh_cidr, args.serve_cidr,
                   args.serve_port, args.buckets, args.vpc)
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except CloudError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
