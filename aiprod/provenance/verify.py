"""Reading a video's C2PA manifest back and judging it.

"valid" means a manifest is present, its signature validates and the video's bytes match its hard
binding (a changed byte fails). "trusted" is separate: the signer chains to a trust anchor given
here (--trust, $AIPROD_C2PA_TRUST); the development certificate is trusted only by its own CA.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from aiprod.provenance.sign import ASSERTION, IPTC, MP4


def _context(trust_anchors: str | Path | None):
    import c2pa

    if trust_anchors is None:
        return None
    anchors = Path(trust_anchors).expanduser().read_text(encoding="utf-8")
    return c2pa.Context.from_dict({"trust": {"user_anchors": anchors}, "verify": {"verify_trust": True}})


def _assertion(manifest: dict[str, Any], label: str) -> dict[str, Any]:
    for assertion in manifest.get("assertions", []):
        if assertion.get("label") == label:
            return assertion.get("data") or {}
    return {}


def verify_bytes(data: bytes, trust_anchors: str | Path | None = None) -> dict[str, Any]:
    """The verdict on one MP4: {valid, trusted, signer, source_type, model_version, mode, ...};
    `error` says why a video without a readable manifest is not valid."""
    import c2pa

    try:
        reader = c2pa.Reader.try_create(MP4, io.BytesIO(data), None, _context(trust_anchors))
    except c2pa.C2paError as exc:
        return {"valid": False, "trusted": False, "error": f"manifest unreadable: {type(exc).__name__}: {exc}"}
    if reader is None:
        return {"valid": False, "trusted": False, "error": "no C2PA manifest"}
    with reader:
        store = json.loads(reader.json())
    state = store.get("validation_state")
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    failures = [item.get("code") for item in
                store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])]
    actions = _assertion(manifest, "c2pa.actions.v2").get("actions") or _assertion(manifest, "c2pa.actions").get(
        "actions") or [{}]
    generation = _assertion(manifest, ASSERTION)
    signature = manifest.get("signature_info", {})
    signer = signature.get("common_name") or ""
    if signature.get("issuer"):
        signer = f"{signer} (issued by {signature['issuer']})"
    return {
        "valid": state in ("Valid", "Trusted"),
        "trusted": state == "Trusted",
        "signer": signer,
        "development_certificate": str(generation.get("signing_certificate", "")).startswith("development"),
        "source_type": str(actions[0].get("digitalSourceType", "")).removeprefix(IPTC),
        "generator": generation.get("generator"),
        "model_version": generation.get("model_version"),
        "adapter": generation.get("adapter"),
        "mode": generation.get("mode"),
        "language": generation.get("language"),
        "prompt_sha256": generation.get("prompt_sha256"),
        "created": generation.get("created"),
        "notes": generation.get("notes", []),
        "validation_state": state,
        "failures": failures,  # validation codes; signingCredential.untrusted alone leaves a manifest valid
    }


def verify_file(path: str | Path, trust_anchors: str | Path | None = None) -> dict[str, Any]:
    return verify_bytes(Path(path).read_bytes(), trust_anchors)
