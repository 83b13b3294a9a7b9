#!/usr/bin/env python3
"""Deliver to mailing-list archives from several threads at once, each thread
as the archive's owner.

The threaded version of archive_delivery.py: one worker thread per archive
(mode 4600: set-user-ID bit, no execute bits, writable only by the owner),
all running at the same time.  Each worker becomes the owner of its archive
with ``Switcher(scope="thread")``, which changes only the calling thread (the
raw set*id system calls; the C library's wrappers would change every
thread), appends, and comes back to root, ``--rounds`` times.  The other
workers keep their own identity meanwhile: inside each switch the worker
reads its ids back and checks they are its owner's, and after each one that
it is root again; any other identity seen is reported.

Usage (as root):

    threaded_delivery.py [--rounds N] ARCHIVE [ARCHIVE ...] < message

Exit status: 0 delivered everywhere and every read-back matched; 1 refused
before writing (no per-thread mechanism here, or an archive that is not one);
2 a delivery failed or a thread saw an identity that was not its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass, field

from archive_delivery import RefusalError, append, check_archive

from uidprobe.privileges import NoMechanismError, PrivilegeError, Switcher


@dataclass
class Worker:
    """One archive, delivered to by one thread."""

    path: str
    st: os.stat_result
    delivered: int = 0
    errors: list[str] = field(default_factory=list)


def deliver(switcher: Switcher, w: Worker, message: bytes, rounds: int, start: threading.Barrier) -> None:
    owner, group = w.st.st_uid, w.st.st_gid
    start.wait()  # every worker switches at the same time as the others
    for _ in range(rounds):
        try:
            with switcher.as_user(owner, group) as inside:
                seen = (os.getresuid(), os.getresgid(), os.getgroups())  # this thread's ids
                want: tuple[object, ...] = (
                    (inside.uids.real, owner, inside.uids.saved),
                    (inside.gids.real, group, inside.gids.saved),
                    [],
                )
                if seen != want or inside.uids.effective != owner:
                    w.errors.append(f"inside the switch this thread holds {seen}, not {want}")
                    return
                append(w.path, w.st, message)
            back = os.getresuid()
            if back[1] != 0:
                w.errors.append(f"after restoring this thread holds uids {back}, not root")
                return
            w.delivered += 1
        except (OSError, PrivilegeError) as e:
            w.errors.append(f"{type(e).__name__}: {e}")
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE")
    parser.add_argument("--rounds", type=int, default=1, help="deliveries per archive (default 1)")
    args = parser.parse_args(argv)
    message = sys.stdin.buffer.read()

    try:
        switcher = Switcher(scope="thread")  # needs THREAD_CREDENTIALS=1
        workers = [Worker(p, check_archive(p)) for p in args.archives]
    except (NoMechanismError, RefusalError) as e:
        print(f"threaded_delivery: refused, nothing written: {e}", file=sys.stderr)
        return 1
    start = threading.Barrier(len(workers))
    threads = [
        threading.Thread(target=deliver, args=(switcher, w, message, args.rounds, start), name=w.path) for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = 0
    for w in workers:
        for problem in w.errors:
            print(f"threaded_delivery: {w.path}: {problem}", file=sys.stderr)
            status = 2
        mech = switcher.mechanism
        print(f"delivered {w.delivered} times to {w.path} as uid {w.st.st_uid} via {mech.uid}/{mech.gid}")
    if os.getresuid() != (0, 0, 0):
        print(f"threaded_delivery: the main thread ended as {os.getresuid()}, not root", file=sys.stderr)
        status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
