"""python -m aiprod.provenance verify FILE [--trust CA.pem] [--require-trusted]

Prints the verdict as JSON (valid, trusted, signer, source type, model version, mode, ...). Exit
status 0 when the manifest is valid (and trusted, with --require-trusted), 1 when it is missing,
invalid or tampered with, 2 when the file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from aiprod.provenance.verify import verify_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiprod.provenance",
                                     description="Verify the C2PA content credentials of an AIPROD video.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="print the manifest's verdict as JSON")
    verify.add_argument("file")
    verify.add_argument("--trust", help="PEM of CA certificates to trust (e.g. ~/.aiprod/provenance/dev-ca.pem); "
                        "default: $AIPROD_C2PA_TRUST when set")
    verify.add_argument("--require-trusted", action="store_true", help="exit 1 unless the signer is trusted")
    args = parser.parse_args(argv)
    trust = args.trust or os.environ.get("AIPROD_C2PA_TRUST") or None
    try:
        verdict = verify_file(args.file, trust)
    except OSError as exc:
        print(f"provenance: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    print(json.dumps(verdict, indent=1, ensure_ascii=False))
    return 0 if verdict["valid"] and (verdict["trusted"] or not args.require_trusted) else 1


if __name__ == "__main__":
    sys.exit(main())
