"""Device profiles (YAML data plus the detected host) and the cost model that predicts speed and memory on them.

``get_profile`` is the one lookup: ``host`` is detected and measured (``detect.py``), anything
else is a built-in profile or a YAML file (``profiles.py``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import unknown_name_error
from .detect import detect_host
from .profiles import DeviceProfile, builtin_profiles, load_profile, parse_fraction, parse_size

__all__ = ["DeviceProfile", "builtin_profiles", "get_profile", "load_profile", "parse_fraction", "parse_size"]


def get_profile(spec: str, threads: int | None = None) -> DeviceProfile:
    """A profile by name (``host``, a built-in) or YAML path; unknown names suggest the closest.

    >>> get_profile("host").measured              # doctest: +SKIP
    True
    """
    spec = str(spec)
    if spec == "host":
        return detect_host(threads=threads)
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        return load_profile(spec)
    profiles = builtin_profiles()
    if spec in profiles:
        return profiles[spec]
    raise unknown_name_error("device", spec, ["host", *profiles])
