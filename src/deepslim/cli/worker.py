"""``deepslim worker``: join a search study in a shared Optuna storage and run its queued trials (issue 15).

``deepslim search --workers N`` starts N of these on its own machine; on another machine, start them by hand with
the same storage URL and study name (the URL may also come from the ``DEEPSLIM_STORAGE`` environment variable, which
keeps a password out of the process list). A worker exits 0 when no queued trial is left.
"""

from __future__ import annotations

import argparse
import os

from deepslim.cli._common import err, threads_arg


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the command's parser to ``sub`` (registered once in ``deepslim.cli.COMMANDS``)."""
    p = sub.add_parser("worker", help="join a search study (deepslim search) and run its queued trials")
    p.add_argument("--storage", help="the study's Optuna storage: postgresql://user:password@host:port/db or "
                   "journal:PATH (default: $DEEPSLIM_STORAGE)")  # fmt: skip
    p.add_argument("--study", default="deepslim-search", help="study name (default deepslim-search)")
    p.add_argument("--threads", type=threads_arg, default=1, help="intra-op threads of this worker (default 1)")
    p.add_argument("--model", help="the study's model file on this machine (default: the path the search recorded; "
                   "it must be the same file: its SHA-256 is checked)")  # fmt: skip
    p.add_argument("--arch", help="file.py:factory that builds the model, when the search's model came from one")
    p.add_argument("--data", help="dataset spec on this machine (default: the one the search recorded)")
    p.add_argument("--timer", help="module:name of the custom latency timer the study records, if it records one")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for deepslim search to create the study (default 0: fail at once)")
    p.add_argument("--cache-dir", help="where per-layer latency tables are kept (default ~/.cache/deepslim/latency)")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import torch

    from deepslim.errors import ConfigError
    from deepslim.search.workers import STORAGE_ENV, run_worker

    url = args.storage or os.environ.get(STORAGE_ENV)
    if not url:
        raise ConfigError(f"give the study's storage: --storage URL (or set {STORAGE_ENV})")
    torch.set_num_threads(args.threads)
    done = run_worker(url, args.study, threads=args.threads, model=args.model, arch=args.arch, data=args.data,
                      timer=args.timer, cache_dir=args.cache_dir, wait_s=args.wait)  # fmt: skip
    if not args.quiet:
        err.print(f"worker done: ran {done} trial(s) of study {args.study!r}", markup=False)
    return 0
