"""Peak resident memory of the calling process."""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """This process's own peak RSS: ``VmHWM`` from /proc/self/status where there is one, else ``ru_maxrss``.

    ``ru_maxrss`` is not enough in a child: Linux carries the parent's high-water mark across
    fork/exec into it, so a worker started by a 4 GiB parent reported 4 GiB. ``VmHWM`` belongs to
    the address space, which exec replaces.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
