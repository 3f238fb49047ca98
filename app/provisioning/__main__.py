"""`python -m app.provisioning run|check`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.provisioning import manifest as manifest_mod
from app.provisioning.run import run
from app.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.provisioning")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run provisioning (the program `provisioning` does this)")
    run_parser.add_argument("--force", action="store_true", help="run even if unchanged since a successful run")
    check = sub.add_parser("check", help="validate a manifest file and print its problems")
    check.add_argument("manifest")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            print(manifest_mod.parse(Path(args.manifest).read_text()).summary())
            return 0
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    return run(get_settings(), force=args.force)


if __name__ == "__main__":
    sys.exit(main())
