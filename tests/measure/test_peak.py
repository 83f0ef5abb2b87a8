"""Peak RSS of a child is its own, not its parent's (bench/peak.py)."""

import subprocess
import sys

from edgellm.measure.peak import peak_rss_bytes


def test_child_peak_rss_excludes_the_parents():
    ballast = bytearray(2 ** 30)                # the parent touches 1 GiB before starting the child
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    assert peak_rss_bytes() >= 2 ** 30
    out = subprocess.run([sys.executable, "-c", "from edgellm.measure.peak import peak_rss_bytes as p; print(p())"],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) < 600 * 2 ** 20       # the child imports torch: about 220 MiB
    del ballast
