"""Operations: cloud bursts on AWS and their local rehearsal.

    python -m aiprod.ops.cloud check | policy | setup      # cluster.yaml invariants, IAM, security group
    python -m aiprod.ops.rehearsal --out out/rehearsal      # a burst rehearsed on one machine

Modules: `cluster_config` (cluster.yaml, its schema, the pinned Ray), `security_rules` (the
invariants, one function each), `iam_policies`, `aws_setup` (security group, instance profiles),
`cloud` (the CLI), `rehearsal` (the driver) with the programs it runs, `rehearsal_job` and
`token_probe`.
"""
