"""C2PA content credentials: every MP4 AIPROD writes for a user is signed (`sign`), with credentials
from config or this machine's development certificate (`keys`); `verify` reads them back
(`python -m aiprod.provenance verify FILE`); `disclosure` burns the visible "AI-generated" label."""

from aiprod.provenance.keys import ProvenanceKeyError, SigningKeys, dev_credentials, load_keys
from aiprod.provenance.sign import Facts, Provenance, SigningError, alert_prompt
from aiprod.provenance.verify import verify_bytes, verify_file

__all__ = [
    "Facts", "Provenance", "ProvenanceKeyError", "SigningError", "SigningKeys", "alert_prompt", "dev_credentials",
    "load_keys", "verify_bytes", "verify_file",
]
