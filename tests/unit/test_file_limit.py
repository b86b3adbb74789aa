"""The node lifts a low soft open-files limit so it can hold max_connections sockets."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_low_soft_limit_is_raised_towards_what_the_node_needs() -> None:
    script = textwrap.dedent("""
        import resource
        from gateway.fileslimit import raise_file_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        wanted = 2000 if hard == resource.RLIM_INFINITY else min(2000, hard)
        got = raise_file_limit(wanted)
        print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], wanted)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    got, soft, wanted = map(int, out)
    assert wanted > 256
    assert got == soft == wanted
