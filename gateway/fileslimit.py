"""The process's open-files limit: every socket is a file."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("gateway.files")


def raise_file_limit(wanted: int) -> int:
    """Lift the soft open-files limit towards ``wanted`` (up to the hard limit); return it.

    Many systems start processes with a soft limit of 1024, far below the sockets a node serves
    or a load test opens; the hard limit is what an operator really granted.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open-files limit is %d, below the %d needed: raise the hard limit "
                    "(ulimit -Hn) to open that many sockets", soft, wanted)
    return int(soft)
