"""Generated CLI flags: every config field has one, no default is stated twice, values reach the config."""

import argparse
import dataclasses
import json

import pytest
from conftest import run_cli

from edgellm.api import EvalConfig
from edgellm.calibconfig import CalibConfig
from edgellm.cli import build_parser
from edgellm.commands.flags import add_config_flags, config_fields, config_from_args
from edgellm.distillation import DistillConfig, TuneConfig
from edgellm.exporters.executorch import ExecuTorchExportConfig
from edgellm.exporters.gguf import GGUFExportConfig
from edgellm.exporters.onnx import OnnxExportConfig
from edgellm.measure import BenchConfig
from edgellm.pruning import PruneConfig
from edgellm.quantization import QuantConfig
from edgellm.serving.app import ServeConfig
from edgellm.transforms import RotateConfig

# command -> the config classes its flags are generated from (and the fields it leaves out on purpose)
COMMANDS = {
    "quantize": [(QuantConfig, ())], "prune": [(PruneConfig, ())], "distill": [(DistillConfig, ())],
    "finetune": [(TuneConfig, ()), (DistillConfig, ("alpha", "hidden_loss"))], "serve": [(ServeConfig, ())],
    "export": [(GGUFExportConfig, ()), (OnnxExportConfig, ()), (ExecuTorchExportConfig, ())],
    "eval": [(EvalConfig, ())], "bench": [(BenchConfig, ())], "rotate": [(RotateConfig, ())],
}


def _subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_has_a_flag_with_no_restated_default(command):
    from edgellm.commands.export import RENAME

    p = _subparser(command)
    by_dest = {a.dest: a for a in p._actions}
    for cls, exclude in COMMANDS[command]:
        fmt = {GGUFExportConfig: "gguf", ExecuTorchExportConfig: "executorch"}.get(cls)
        for path, dest, _, _ in config_fields(cls, exclude=exclude, rename=RENAME.get(fmt) if fmt else None):
            assert dest in by_dest, f"{command}: {cls.__name__}.{'.'.join(path)} has no flag"
            assert by_dest[dest].default is argparse.SUPPRESS, f"{command} --{dest} restates a default"
            assert by_dest[dest].option_strings


def test_calibration_default_is_stated_once():
    assert QuantConfig().calib == PruneConfig().calib == CalibConfig()
    for command in ("quantize", "prune"):
        a = _subparser(command).parse_args(["m", "--out", "o"])
        assert not hasattr(a, "calib_samples")      # left to the dataclass
    help_text = " ".join(_subparser("prune").format_help().split())
    assert f"calibration windows drawn from the text (default: {CalibConfig().samples})" in help_text


def test_flag_values_reach_the_config():
    p = _subparser("quantize")
    a = p.parse_args(["m", "--out", "o", "--method", "gptq", "--bits", "4", "--group-size", "channel", "--asym",
                      "--damp", "0.05", "--block-size", "64", "--awq-grid", "10", "--awq-tokens", "512",
                      "--calib-samples", "7", "--calib-len", "33", "--seed", "3", "--calib", "x.txt",
                      "--include", "a*", "--include", "b*", "--no-clip-search"])
    cfg = config_from_args(QuantConfig, a)
    assert (cfg.method, cfg.bits, cfg.group_size, cfg.symmetric) == ("gptq", 4, None, False)
    assert (cfg.damp, cfg.block_size, cfg.awq_grid, cfg.awq_tokens, cfg.clip_search) == (0.05, 64, 10, 512, False)
    assert cfg.calib == CalibConfig(data="x.txt", samples=7, seq_len=33, seed=3)
    assert cfg.include == ("a*", "b*")
    prune = config_from_args(PruneConfig, _subparser("prune").parse_args(
        ["m", "--out", "o", "--structure", "width", "--max-params", "1e6", "--calib-seq-len", "64"]))
    assert (prune.max_params, prune.calib.seq_len, prune.calib.samples) == (1_000_000, 64, 128)


def test_finetune_starts_from_its_own_values():
    from edgellm.distillation.config import FINETUNE

    cfg = config_from_args(DistillConfig, _subparser("finetune").parse_args(["m", "--data", "d", "--out", "o", "--steps", "3"]),
                           exclude=("alpha", "hidden_loss"), base=DistillConfig(**FINETUNE))
    assert (cfg.lr, cfg.batch_size, cfg.steps, cfg.alpha) == (FINETUNE["lr"], FINETUNE["batch_size"], 3, 1.0)


def test_export_flags_build_the_format_config():
    from edgellm.commands.export import config_of

    p = _subparser("export")
    assert config_of(p.parse_args(["m", "--format", "gguf", "--out", "o.gguf", "--gguf-type", "q4_0",
                                   "--gguf-embedding-type", "f16"])) == GGUFExportConfig("q4_0", "f16")
    assert config_of(p.parse_args(["m", "--format", "executorch", "--out", "o", "--variant", "int4",
                                   "--block-size", "64"])) == ExecuTorchExportConfig("int4", 64)
    assert config_of(p.parse_args(["m", "--format", "onnx", "--out", "o", "--no-fuse"])) == OnnxExportConfig(fuse=False)


def test_serve_flags_keep_their_old_names():
    a = _subparser("serve").parse_args(["m", "--model-name", "x", "--timeout", "5", "--port", "9000"])
    assert config_from_args(ServeConfig, a) == ServeConfig(model_id="x", timeout_s=5.0, port=9000)


def test_eval_and_bench_flags_keep_their_old_names():
    a = _subparser("eval").parse_args(["m", "--ppl", "t.txt", "--ctx", "64", "--max-tokens", "0", "--reference", "r"])
    assert config_from_args(EvalConfig, a) == EvalConfig(ppl="t.txt", ctx=64, max_tokens=None, reference="r")
    assert config_from_args(EvalConfig, _subparser("eval").parse_args(["m"])) == EvalConfig()
    a = _subparser("bench").parse_args(["m", "--prompt-len", "16", "--new-tokens", "8", "--runs", "3", "--warmup", "0",
                                        "--no-machine"])
    assert config_from_args(BenchConfig, a) == BenchConfig(prompt_len=16, new_tokens=8, runs=3, warmup=0, machine=False)
    assert config_from_args(BenchConfig, _subparser("bench").parse_args(["m"])) == BenchConfig()


def test_bad_flag_value_is_one_line_exit_2(tiny_llama, tmp_path):
    code, _, err = run_cli("quantize", str(tiny_llama), "--out", str(tmp_path / "q"), "--calib-samples", "0",
                           "--method", "gptq")
    assert code == 2 and err.startswith("error: calibration samples")


def test_generated_flags_on_a_new_config():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        depth: int = 2

    @dataclasses.dataclass(frozen=True)
    class Outer:
        name: str = "a"
        inner: Inner = dataclasses.field(default_factory=Inner)
        tags: tuple[str, ...] = ()
        on: bool = True

    p = argparse.ArgumentParser()
    add_config_flags(p, Outer)
    cfg = config_from_args(Outer, p.parse_args(["--inner-depth", "5", "--tags", "x", "--no-on"]))
    assert cfg == Outer(inner=Inner(5), tags=("x",), on=False)
    assert config_from_args(Outer, p.parse_args([])) == Outer()


def test_quantize_cli_json_records_nested_calib(tiny_llama, tmp_path):
    out, js = tmp_path / "q", tmp_path / "q.json"
    code, _, err = run_cli("quantize", str(tiny_llama), "--out", str(out), "--bits", "8", "--json", str(js))
    assert code == 0, err
    d = json.loads(js.read_text())
    assert d["config"]["calib"]["samples"] == CalibConfig().samples
