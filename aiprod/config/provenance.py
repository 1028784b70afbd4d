"""Config section of provenance: the C2PA content credentials signed into every MP4 (aiprod.provenance)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aiprod.config.section import Section

CERT_ENV, KEY_ENV = "AIPROD_C2PA_CERT", "AIPROD_C2PA_KEY"


class ProvenanceConfig(Section):
    cert: str | None = Field(
        None, description="signing certificate chain (PEM, signer first, then its CAs): a file path, or "
        f"env:NAME for an environment variable holding the PEM or a path to it; None = ${CERT_ENV} when set, "
        "else this machine's development certificate (allow_dev_cert)")
    key: str | None = Field(
        None, description=f"the signer's private key (PEM), given like cert; None = ${KEY_ENV} when set, else "
        "the development key. EC P-256/384/521 signs with ES256/384/512, RSA with PS256, Ed25519 with Ed25519")
    allow_dev_cert: bool = Field(
        True, description="with no cert and key, sign with a self-signed development certificate made once per "
        "machine under dev_dir (the manifest says so); false requires cert and key (cluster preset)")
    dev_dir: str = Field("~/.aiprod/provenance", description="where the development certificate is kept")
    prompt: Literal["sha256", "omit", "text"] = Field(
        "sha256", description="what the manifest records of the prompt: its sha256, nothing, or the text itself")

    @model_validator(mode="after")
    def _keys_configured(self) -> ProvenanceConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be set together (both PEM paths or env:NAME), or both left null")
        if not self.allow_dev_cert and self.cert is None:
            raise ValueError(
                "allow_dev_cert is false, so cert and key must be set: PEM paths, or "
                f"env:NAME (e.g. provenance.cert=env:{CERT_ENV} provenance.key=env:{KEY_ENV})")
        return self
