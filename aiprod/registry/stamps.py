"""When and by whom: the stamps on history lines, entries, pointers, claims and locks."""

from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime, timezone
from typing import Any


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def actor() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}
