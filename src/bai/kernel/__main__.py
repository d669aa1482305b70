"""``python3 -m bai.kernel --workdir DIR``: run the kernel runner (see ``bai.kernel``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bai.kernel", description=__doc__)
    parser.add_argument("--workdir", default="/home/work", help="the kernel's work directory")
    parser.add_argument("--pooled", action="store_true",
                        help="start ahead of any kernel and wait for a claim (see bai.kernel)")
    args = parser.parse_args(argv)
    from bai.kernel.runner import main as serve

    return serve(args.workdir, args.pooled)


if __name__ == "__main__":
    sys.exit(main())
