"""Signing C2PA content credentials into MP4s: what made the video (AIPROD, the registry model version,
the mode), its digital source type, language, prompt hash and time.

    signer = Provenance(cfg.provenance)
    mp4 = signer.sign(mp4, Facts("model", "standard", "hi", prompt, model_version="pib-videogen-..."))
    mp4, signed = signer.sign_alert(mp4, facts)   # emergencies: never raises, unsigned on failure

A manifest is signed per answer (about 5 ms for a 5 s alert card on one core), so its time is the
time of that answer, also for alert cards kept in the ingress's cache.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from aiprod.config import ProvenanceConfig
from aiprod.provenance.keys import SigningKeys, load_keys

log = logging.getLogger(__name__)

GENERATOR = "AIPROD"
ASSERTION = "org.aiprod.generation"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SOURCE_TYPES = {"model": "trainedAlgorithmicMedia", "template": "algorithmicMedia"}
MP4 = "video/mp4"


class SigningError(RuntimeError):
    """The C2PA library could not sign this video."""


def generator_version() -> str:
    try:
        return metadata.version("aiprod")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Facts:
    """What a manifest says about one video."""

    source: Literal["model", "template"]  # model output or a template card drawn without a model
    mode: str  # standard | emergency | template
    language: str
    prompt: str  # the request's text; recorded per provenance.prompt (sha256 by default)
    model_version: str | None = None  # the registry version that generated it (an adapter's base)
    adapter: str | None = None  # the registry adapter folded into that base, when one answered
    notes: tuple[str, ...] = ()  # what differs from the request, e.g. a card drawn in English
    when: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))


def alert_prompt(emergency_type: str, headline: str | None = None, instructions: str | None = None,
                 region: str = "") -> str:
    """The text an alert is made from, as its manifest's prompt."""
    return "\n".join(part for part in (emergency_type, headline or "", instructions or "", region) if part)


def manifest_for(facts: Facts, keys: SigningKeys, prompt_mode: str) -> dict[str, Any]:
    version = generator_version()
    when = facts.when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    generation: dict[str, Any] = {
        "generator": f"{GENERATOR} {version}",
        "model_version": facts.model_version,
        "mode": facts.mode,
        "language": facts.language,
        "created": when,
        "signing_certificate": "development (self-signed, not for publication)" if keys.development else "configured",
    }
    if facts.adapter:
        generation["adapter"] = facts.adapter
    if facts.notes:
        generation["notes"] = list(facts.notes)
    if prompt_mode == "sha256":
        generation["prompt_sha256"] = hashlib.sha256(facts.prompt.encode("utf-8")).hexdigest()
    elif prompt_mode == "text":
        generation["prompt"] = facts.prompt
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": version}],
        "title": f"{GENERATOR} {facts.mode} video",
        "format": MP4,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": IPTC + SOURCE_TYPES[facts.source],
                "softwareAgent": {"name": GENERATOR, "version": version},
                "when": when,
            }]}},
            {"label": ASSERTION, "data": generation},
        ],
    }


class Provenance:
    """One process's signer: credentials loaded once (ProvenanceKeyError at start-up, not per video)."""

    def __init__(self, cfg: ProvenanceConfig | None = None):
        import c2pa

        self.cfg = cfg or ProvenanceConfig()
        self.keys = load_keys(self.cfg)
        # No timestamp authority: that would put a network call, and its delays, into every alert's answer.
        info = c2pa.C2paSignerInfo(self.keys.algorithm, self.keys.chain_pem, self.keys.key_pem, None)
        try:
            self._signer = c2pa.Signer.from_info(info)
        except c2pa.C2paError as exc:
            raise SigningError(f"provenance: the certificate and key from {self.keys.source} cannot sign: "
                               f"{exc}") from exc
        self._lock = threading.Lock()  # one native signer, used from the ingress's threads
        self._count_lock = threading.Lock()
        self.signed = 0
        self.unsigned = 0  # emergency answers that went out without a manifest (sign_alert)

    def sign(self, mp4: bytes, facts: Facts, by: float | None = None) -> bytes:
        """`mp4` with its manifest embedded (SigningError when the library refuses, or when the one
        native signer is not free before `by`, a time.time())."""
        import c2pa

        manifest = manifest_for(facts, self.keys, self.cfg.prompt)
        out = io.BytesIO()
        if by is None:
            acquired = self._lock.acquire()
        else:
            left = by - time.time()
            acquired = self._lock.acquire(timeout=left) if left > 0 else self._lock.acquire(blocking=False)
        if not acquired:
            raise SigningError("provenance: no time left to sign before the answer's deadline")
        try:
            with c2pa.Builder(manifest) as builder:
                builder.sign(self._signer, MP4, io.BytesIO(mp4), out)
                self.signed += 1
        except c2pa.C2paError as exc:
            raise SigningError(f"provenance: signing failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._lock.release()
        return out.getvalue()

    def sign_alert(self, mp4: bytes, facts: Facts, by: float | None = None) -> tuple[bytes, bool]:
        """An alert is answered even when it cannot be signed (a failure, or no time before `by`):
        (signed mp4, True) or (mp4, False), counted in `unsigned` and logged."""
        try:
            return self.sign(mp4, facts, by), True
        except Exception as exc:  # noqa: BLE001 - an emergency is never answered with an error
            self.count_unsigned(f"{type(exc).__name__}: {exc}")
            return mp4, False

    def count_unsigned(self, why: str) -> None:
        """An emergency answer that leaves without a manifest."""
        with self._count_lock:
            self.unsigned += 1
        log.warning("emergency alert answered unsigned (%d so far): %s", self.unsigned, why)

    def sign_file(self, path: str | Path, facts: Facts) -> None:
        """Sign an MP4 file in place (written to a temporary name, then renamed)."""
        path = Path(path)
        signed = self.sign(path.read_bytes(), facts)
        tmp = path.with_name(f".{path.name}.signing")
        tmp.write_bytes(signed)
        tmp.replace(path)

    def info(self) -> dict[str, Any]:
        return {"signer": self.keys.signer, "development": self.keys.development, "algorithm": self.keys.algorithm,
                "signed": self.signed, "unsigned": self.unsigned}
