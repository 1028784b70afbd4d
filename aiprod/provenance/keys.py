"""Signing credentials: the configured certificate chain and key (PEM files or environment variables),
or this machine's development certificate, made once under `provenance.dev_dir`.

The development credentials are a small CA and a signer certificate issued by it (C2PA validators
refuse a self-signed end-entity certificate and want digitalSignature and emailProtection on the
signer); `verify --trust DEV_DIR/dev-ca.pem` trusts them on this machine, nobody else does.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiprod.config import ConfigError, ProvenanceConfig
from aiprod.config.provenance import CERT_ENV, KEY_ENV

DEV_CA, DEV_CHAIN, DEV_KEY = "dev-ca.pem", "dev-chain.pem", "dev-key.pem"
DEV_ORGANIZATION = "AIPROD development"
DEV_SIGNER = "AIPROD development certificate (not for publication)"
DEV_YEARS = 10


class ProvenanceKeyError(ConfigError):
    """The signing certificate or key cannot be found or read; the message names the config key."""


@dataclass(frozen=True)
class SigningKeys:
    chain_pem: bytes  # signer certificate first, then the CAs that issued it
    key_pem: bytes
    algorithm: str  # c2pa's name: es256, es384, es512, ps256, ed25519
    signer: str  # "common name (organization)" of the signing certificate
    development: bool  # the machine's self-made development certificate
    source: str  # where they came from, for messages


def _read_source(value: str, field: str) -> tuple[bytes, str]:
    """PEM bytes from a path or `env:NAME` (the variable holding the PEM or a path to it)."""
    where = value
    if value.startswith("env:"):
        name = value[4:]
        value = os.environ.get(name, "")
        if not value.strip():
            raise ProvenanceKeyError(
                f"config: provenance.{field} is env:{name} but that environment variable is empty; set it to the "
                f"PEM or a path to it (e.g. runtime_env env_vars on a cluster)")
        if value.lstrip().startswith("-----BEGIN"):
            return value.encode(), f"${name}"
        where = f"${name} ({value})"
    path = Path(value).expanduser()
    try:
        return path.read_bytes(), where
    except OSError as exc:
        raise ProvenanceKeyError(f"config: provenance.{field}: cannot read {path}: {exc.strerror}") from None


def _algorithm(key_pem: bytes, chain_pem: bytes, source: str) -> str:
    """c2pa's algorithm name for the key, once it is known to belong to the chain's first certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ProvenanceKeyError(f"config: provenance.key ({source}) is not an unencrypted PEM private key: "
                                 f"{exc}") from None
    der = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    signer_public = x509.load_pem_x509_certificates(chain_pem)[0].public_key()
    if key.public_key().public_bytes(*der) != signer_public.public_bytes(*der):
        raise ProvenanceKeyError(f"config: provenance.key ({source}) does not belong to the first certificate of "
                                 f"provenance.cert (the signer's own certificate must come first)")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    elif isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise ProvenanceKeyError(f"config: provenance.key ({source}) is a {type(key).__name__}; C2PA signs with EC "
                             f"P-256/384/521, RSA or Ed25519 keys")


def _signer_name(chain_pem: bytes, source: str) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as exc:
        raise ProvenanceKeyError(f"config: provenance.cert ({source}) holds no PEM certificate: {exc}") from None

    def attribute(oid) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    common, organization = attribute(NameOID.COMMON_NAME), attribute(NameOID.ORGANIZATION_NAME)
    return f"{common} ({organization})" if organization else common or cert.subject.rfc4514_string()


def load_keys(cfg: ProvenanceConfig) -> SigningKeys:
    """The credentials `cfg` names (ProvenanceKeyError says which key is missing or unreadable)."""
    cert, key = cfg.cert, cfg.key
    if cert is None and os.environ.get(CERT_ENV) and os.environ.get(KEY_ENV):
        cert, key = f"env:{CERT_ENV}", f"env:{KEY_ENV}"
    if cert is None or key is None:
        if not cfg.allow_dev_cert:
            raise ProvenanceKeyError("config: provenance.cert and provenance.key are required when "
                                     "provenance.allow_dev_cert is false")
        directory = dev_credentials(cfg.dev_dir)
        chain, key_pem = (directory / DEV_CHAIN).read_bytes(), (directory / DEV_KEY).read_bytes()
        source = str(directory)
        signer = _signer_name(chain, source)
        return SigningKeys(chain, key_pem, _algorithm(key_pem, chain, source), signer, True, source)
    chain, cert_source = _read_source(cert, "cert")
    key_pem, key_source = _read_source(key, "key")
    signer = _signer_name(chain, cert_source)  # first: says when the chain holds no certificate
    return SigningKeys(chain, key_pem, _algorithm(key_pem, chain, key_source), signer, False, cert_source)


def dev_credentials(dev_dir: str) -> Path:
    """The machine's development CA, chain and key, made on first use. Replicas starting together may
    race: each builds its own in a temporary directory and renames it into place; the first rename wins."""
    directory = Path(dev_dir).expanduser()
    if (directory / DEV_KEY).exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".provenance-", dir=directory.parent))
    try:
        for name, data in _make_dev_credentials().items():
            (staging / name).write_bytes(data)
        (staging / DEV_KEY).chmod(0o600)
        try:
            staging.rename(directory)
        except OSError:
            if not (directory / DEV_KEY).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _make_dev_credentials() -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION),
                          x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, socket.gethostname()[:64] or "host")])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign, crl_sign=not sign,
                             encipher_only=False, decipher_only=False)

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=365 * DEV_YEARS)
    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = name("AIPROD development CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(sign=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    signer = (x509.CertificateBuilder().subject_name(name(DEV_SIGNER)).issuer_name(ca.subject)
              .public_key(signer_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(usage(sign=True), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {
        DEV_CA: ca.public_bytes(pem),
        DEV_CHAIN: signer.public_bytes(pem) + ca.public_bytes(pem),
        DEV_KEY: signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }
