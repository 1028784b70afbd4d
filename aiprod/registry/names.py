"""Names in a registry: version names (format, configured types and specializations, ordering),
the pointer names, and the files of the registry's layout."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from aiprod.config import RegistryConfig
from aiprod.registry.errors import RegistryError, VersionNameError

# Always used with fullmatch: `$` would also accept a name ending in a newline.
NAME_RE = re.compile(
    r"pib-videogen-(?P<model_type>[a-z0-9]+)"
    r"-v(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"-(?P<specialization>[a-z0-9]+(?:-[a-z0-9]+)*)"
)
NAME_FORMAT = "pib-videogen-{model_type}-v{major}.{minor}.{patch}-{specialization}"

# Registry layout: files of an entry that the registry adds, and files at the root.
REPORT, ENTRY = "report.json", "entry.json"
LATEST, PRODUCTION, HISTORY, LOCK, CLAIM = "latest.json", "production.json", "history.jsonl", ".lock", ".claim"
AB = "ab.json"  # the A/B pointer: {"version", "fraction", "updated_at"}; version null when cleared
STAGING = ".staging"
POINTERS = {"latest": LATEST, "production": PRODUCTION}



@dataclass(frozen=True)
class VersionName:
    model_type: str
    major: int
    minor: int
    patch: int
    specialization: str

    def __str__(self) -> str:
        return NAME_FORMAT.format(**self.__dict__)

    @property
    def semver(self) -> tuple[int, int, int]:
        return self.major, self.minor, self.patch


def parse_version(name: str, cfg: RegistryConfig | None = None) -> VersionName:
    """Validate a version name against the format and the configured types and specializations."""
    cfg = cfg or RegistryConfig()
    match = NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not match:
        raise VersionNameError(
            f"registry: bad version name {name!r}: expected {NAME_FORMAT} "
            f"(lowercase, e.g. pib-videogen-standard-v1.0.0-general)"
        )
    parts = match.groupdict()
    if parts["model_type"] not in cfg.model_types:
        raise VersionNameError(
            f"registry: bad version name {name!r}: model_type '{parts['model_type']}' is not one of "
            f"{cfg.model_types} (registry.model_types)"
        )
    if not any(fnmatch.fnmatchcase(parts["specialization"], p) for p in cfg.specializations):
        raise VersionNameError(
            f"registry: bad version name {name!r}: specialization '{parts['specialization']}' matches none of "
            f"{cfg.specializations} (registry.specializations)"
        )
    return VersionName(parts["model_type"], int(parts["major"]), int(parts["minor"]), int(parts["patch"]),
                       parts["specialization"])


def is_version_name(name: str) -> bool:
    """Has the version-name format (whatever the configured types and specializations)."""
    return NAME_RE.fullmatch(name) is not None


def version_sort_key(name: str) -> tuple:
    """Model type, specialization, then semver."""
    match = NAME_RE.fullmatch(name)
    assert match is not None
    g = match.groupdict()
    return g["model_type"], g["specialization"], int(g["major"]), int(g["minor"]), int(g["patch"])


def pointer_file(which: str) -> str:
    """The file behind the `latest` or `production` pointer."""
    if which not in POINTERS:
        raise RegistryError(f"registry: unknown pointer {which!r} (latest or production)")
    return POINTERS[which]
