"""Model registry: versioned weights under a local dir or s3:// root, with release gates.

    reg = Registry("s3://bucket/registry", cfg.registry)
    reg.publish("out/runs/demo/final", "pib-videogen-standard-v1.0.0-general", report="report.json")
    reg.promote("pib-videogen-standard-v1.0.0-general", gates=cfg.eval.gates)
    local_dir = resolve("s3://bucket/registry", "production")      # for serving

Layout under the root:
    NAME/                 model.safetensors (version stamped in its metadata), config.yaml,
                          state.json, report.json (when given), entry.json, MANIFEST.sha256
    latest.json           {"version": ...}: the last published version
    production.json       {"version": ..., "previous": [...]}: what serves; `previous` is the rollback stack
    ab.json               {"version": ..., "fraction": ...}: the A/B candidate and its traffic share
                          (Registry.set_ab / clear_ab; Serve arms b with `ab: {version: registry}`)
    history.jsonl         one JSON line per change (publish, promote, rollback, ab)
    .lock                 held while pointers and history change

Publishing is create-only: locally the entry is staged beside the root and renamed into place
(a rename onto an existing, non-empty directory fails); on S3 the publisher first creates
`NAME/.claim` with `IfNoneMatch="*"` (a conditional PUT: exactly one creator wins) and writes the
manifest last, so a version without a manifest is an unfinished publish. Pointer files are
replaced atomically (temp + rename locally; a single PUT on S3), and every pointer change plus its
history line happens under the `.lock` object (created the same create-only way).

Modules: `names` (version names, layout), `errors`, `store` (the `Store` protocol, local and S3),
`entry` (building an entry from a checkpoint), `model_registry` (`Registry`, `resolve`).
"""

from aiprod.registry.errors import (
    GateError,
    IntegrityError,
    RegistryError,
    RegistryLockedError,
    VersionExistsError,
    VersionNameError,
    VersionNotFoundError,
)
from aiprod.registry.model_registry import Registry, resolve
from aiprod.registry.names import NAME_FORMAT, NAME_RE, VersionName, parse_version
from aiprod.registry.store import LocalStore, S3Store, Store

__all__ = [
    "NAME_FORMAT",
    "NAME_RE",
    "GateError",
    "IntegrityError",
    "LocalStore",
    "Registry",
    "RegistryError",
    "RegistryLockedError",
    "S3Store",
    "Store",
    "VersionExistsError",
    "VersionName",
    "VersionNameError",
    "VersionNotFoundError",
    "parse_version",
    "resolve",
]
