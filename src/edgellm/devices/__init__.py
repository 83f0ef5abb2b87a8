"""Device profiles (YAML data plus the detected host) and the cost model that predicts speed and memory on them."""

from .profiles import DeviceProfile, builtin_profiles, get_profile, load_profile, parse_fraction, parse_size

__all__ = ["DeviceProfile", "builtin_profiles", "get_profile", "load_profile", "parse_fraction", "parse_size"]
