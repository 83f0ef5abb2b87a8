"""Device profiles: built-ins, user YAML, validation naming the field, unknown names, host detection, CLI."""

from __future__ import annotations

import pytest
import yaml

from conftest import run_cli
from edgellm.devices import builtin_profiles, get_profile, load_profile, parse_fraction, parse_size
from edgellm.errors import EdgeLLMError

REQUIRED_CLASSES = ("smart-speaker-1gb", "raspberry-pi-5-8gb", "midrange-phone-6gb", "flagship-phone-12gb",
                    "jetson-orin-nano-8gb", "laptop-cpu")


def test_builtins_cover_the_required_classes_and_cite_sources():
    profiles = builtin_profiles()
    assert set(REQUIRED_CLASSES) <= set(profiles)
    for p in profiles.values():
        assert p.source.strip() and not p.measured and p.is_prediction
        assert p.mem_bandwidth_GBps > 0 and p.ram_bytes_for_model > 0 and p.runtimes
    assert profiles["smart-speaker-1gb"].ram_bytes_for_model < 2**30
    assert profiles["raspberry-pi-5-8gb"].ram_bytes_for_model < 8 * 2**30


def test_sizes_and_fractions_parse():
    assert parse_size("6GiB") == 6 * 2**30 and parse_size("512 MB") == 512_000_000 and parse_size(7) == 7
    assert parse_fraction("10%") == pytest.approx(0.1) and parse_fraction("0.05") == pytest.approx(0.05)
    with pytest.raises(EdgeLLMError, match="cannot read size"):
        parse_size("lots")
    with pytest.raises(EdgeLLMError):
        parse_fraction("ten")


def _good() -> dict:
    return {"name": "my-board", "ram_bytes_for_model": "1GiB", "storage_bytes": "4GB", "mem_bandwidth_GBps": 5.0,
            "fp32_gflops": 20, "runtimes": ["llama.cpp"], "source": "my measurements"}


def test_user_profile_loads(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump(_good()))
    prof = get_profile(str(p))
    assert prof.name == "my-board" and prof.ram_bytes_for_model == 2**30 and prof.storage_bytes == 4_000_000_000
    assert prof.runtimes == ("llama.cpp",) and not prof.measured


@pytest.mark.parametrize("change, field", [
    ({"mem_bandwidth_GBps": None}, "mem_bandwidth_GBps"),
    ({"mem_bandwidth_GBps": -3}, "mem_bandwidth_GBps"),
    ({"ram_bytes_for_model": "much"}, "ram_bytes_for_model"),
    ({"runtimes": ["tflite"]}, "runtimes"),
    ({"source": ""}, "source"),
    ({"colour": "red"}, "colour"),
    ({"fp32_gflops": None}, "fp32_gflops"),
])
def test_invalid_profile_names_the_field(tmp_path, change, field):
    d = _good()
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(EdgeLLMError, match=field):
        load_profile(p)


def test_unknown_device_suggests_the_closest():
    with pytest.raises(EdgeLLMError) as e:
        get_profile("raspberry-pi-5")
    assert "unknown device 'raspberry-pi-5'" in str(e.value) and "did you mean 'raspberry-pi-5-8gb'" in str(e.value)
    code, _, err = run_cli("device", "--show", "jetson-orin-nano")
    assert code == 2 and "did you mean 'jetson-orin-nano-8gb'" in err


def test_host_is_detected_and_measured():
    h = get_profile("host", threads=1)
    assert h.measured and not h.is_prediction and h.name == "host"
    assert h.mem_bandwidth_GBps > 0 and h.fp32_gflops > 0 and "torch" in h.runtimes
    assert h.details["logical_cores"] >= 1 and isinstance(h.details["isa_flags"], list)
    assert h.ram_bytes_for_model > 0


def test_cli_lists_and_shows(tmp_path):
    code, out, _ = run_cli("device", "--threads", "1", "--json", tmp_path / "d.json")
    assert code == 0
    for name in ("host", *REQUIRED_CLASSES):
        assert name in out
    assert "measured" in out and "predictions" in out
    code, out, _ = run_cli("device", "--show", "raspberry-pi-5-8gb")
    assert code == 0 and "source" in out and "BCM2712" in out and "mem_bandwidth_GBps" in out
