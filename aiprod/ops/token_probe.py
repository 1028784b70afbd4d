"""Connect to a Ray cluster with whatever token the environment gives (RAY_AUTH_MODE,
RAY_AUTH_TOKEN_PATH): the cluster's is accepted, another refused. Run by the rehearsal:

    python -m aiprod.ops.token_probe RAY_ADDRESS      # prints {"connected": ..., "error": ...}
"""

from __future__ import annotations

import json
import sys
from typing import Any


def probe(address: str) -> dict[str, Any]:
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
        return {"connected": bool(ray.nodes()), "error": None}
    except Exception as exc:
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
