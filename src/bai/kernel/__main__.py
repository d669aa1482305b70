"""``python3 -m bai.kernel --workdir DIR``: run the kernel runner (see ``bai.kernel``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bai.kernel", description=__doc__)
    parser.add_argument("--workdir", default="/home/work", help="the kernel's work directory")
    args = parser.parse_args(argv)
    from bai.kernel.runner import main as serve

    return serve(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
