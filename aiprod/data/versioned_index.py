"""Reading an index.json that names its format: the one reader behind a shard directory's index
(`shards.read_index`) and a latent cache's (`latent_cache.read_index`)."""

from __future__ import annotations

import json
from typing import Any

from aiprod import storage


def read_versioned_index(path: str, fmt: str, error: type[Exception], label: str | None = None
                         ) -> dict[str, Any] | None:
    """The JSON object at `path` when its `format` is `fmt`; None when there is no file.

    Anything else raises `error`, its message starting with `label` (default: `path`)."""
    if not storage.exists(path):
        return None
    label = label or path
    try:
        index = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise error(f"{label}: not valid JSON ({exc})") from None
    found = index.get("format") if isinstance(index, dict) else None
    if found != fmt:
        raise error(f"{label}: unknown format {found!r}, expected {fmt!r}")
    return index
