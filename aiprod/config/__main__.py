"""`python -m aiprod.config`: print a resolved config (YAML), its hash, or the JSON schema."""

from __future__ import annotations

import argparse
import json
import sys

from aiprod.config.loading import available_presets, load_config, schema
from aiprod.config.section import ConfigError

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiprod.config", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--preset", default="tiny", help=f"one of {available_presets()} or a YAML path")
    parser.add_argument("--config", help="YAML file (may say `base: PRESET`)")
    parser.add_argument("--schema", action="store_true", help="print the JSON schema and exit")
    parser.add_argument("--hash", action="store_true", help="print the config hash only")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(schema(), indent=2))
        return 0
    try:
        cfg = load_config(args.config or args.preset, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(cfg.hash() if args.hash else cfg.to_yaml(), end="\n" if args.hash else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
