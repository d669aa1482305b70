"""``python3 -m bai.kernel --workdir DIR``: run the kernel runner (see ``bai.kernel``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bai.kernel", description=__doc__)
    parser.add_argument("--workdir", default="/home/work", help="the kernel's work directory")
    parser.add_argument("--pooled", action="store_true",
                        help="start ahead of any kernel and wait for a claim (see bai.kernel)")
    parser.add_argument("--state-dir", default=None,
                        help="where runner.sock, runner.json, kernel.log and exit.json live "
                             "[default: WORKDIR/.bai]")
    parser.add_argument("--user", default=None, metavar="UID:GID",
                        help="started as root: drop to this uid and gid for good once the "
                             "state files are open, before anything of the kernel runs")
    parser.add_argument("--listen-fd", type=int, default=None,
                        help="serve this inherited listening socket instead of binding "
                             ".bai/runner.sock")
    parser.add_argument("--agent-uid", type=int, default=None,
                        help="accept connections only from this uid (SO_PEERCRED)")
    parser.add_argument("--seccomp", default=None, metavar="FILE",
                        help="load this compiled seccomp filter (BPF) before anything of the "
                             "kernel runs; fail if it cannot be loaded")
    args = parser.parse_args(argv)
    user = None
    if args.user:
        uid, _, gid = args.user.partition(":")
        user = (int(uid), int(gid or uid))
    from bai.kernel.runner import main as serve

    return serve(args.workdir, args.pooled, args.state_dir, user, args.listen_fd,
                 args.agent_uid, args.seccomp)


if __name__ == "__main__":
    sys.exit(main())
