"""Least-privilege IAM documents: S3 on the project's buckets for every node, and for the head
only what Ray's autoscaler needs to launch, tag and end this cluster's workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiprod.ops.cluster_config import CLUSTER_TAG, DEFAULT_BUCKETS, instance_profile_names

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


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


def role_policies(cluster: dict[str, Any], buckets: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Role name -> {inline policy name: document} for the head's and the workers' roles."""
    head, worker = instance_profile_names(cluster)
    return {
        head: {"aiprod-s3": bucket_policy(buckets),
               "aiprod-autoscaler": head_policy(cluster["cluster_name"], worker)},
        worker: {"aiprod-s3": bucket_policy(buckets)},
    }


def policy_documents(cluster: dict[str, Any], buckets: list[str]) -> dict[str, dict[str, Any]]:
    """{"worker": ..., "head": ...}: what `policy` prints."""
    _, worker = instance_profile_names(cluster)
    return {"worker": bucket_policy(buckets), "head": head_policy(cluster["cluster_name"], worker)}


def write_policies(out_dir: str | Path, cluster: dict[str, Any], buckets: list[str]) -> list[Path]:
    """docs/iam-policy.json (every node) and iam-policy-head.json (the autoscaler's extra rights)."""
    from aiprod.storage import write_text_atomic

    documents = policy_documents(cluster, buckets)
    files = {
        Path(out_dir) / "iam-policy.json": documents["worker"],
        Path(out_dir) / "iam-policy-head.json": documents["head"],
    }
    for path, doc in files.items():
        write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return list(files)
