"""What the command-line entry points (jobs/*.py, `python -m aiprod.*`) share."""

from __future__ import annotations

import argparse


def job_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the first paragraph of `doc` (the job's module docstring)."""
    return argparse.ArgumentParser(prog=prog, description=" ".join(doc.split("\n\n")[0].split()))
