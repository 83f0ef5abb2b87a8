"""``edgellm export MODEL --format gguf --out PATH``: write an artifact for an on-device runtime, verified on it.

The format options are flags generated from the three export configs (``commands/flags.py``); the
flags of the chosen ``--format`` build its config, which ``exporters.export`` takes.
"""

from __future__ import annotations

from . import emit_json, load_kwargs


def add_arguments(p) -> None:
    from ..exporters import EXPORTERS

    p.add_argument("model", help="built-in name or model folder (edgellm's quantized/pruned/distilled folders too)")
    p.add_argument("--format", required=True, choices=sorted(EXPORTERS), help="artifact format")
    p.add_argument("--out", required=True, metavar="PATH", help="output file or folder (e.g. out/model.gguf)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the logits/perplexity check on the artifact's runtime (not recommended)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for verification")
    from .flags import add_config_flags

    for fmt, cls in configs().items():
        add_config_flags(p, cls, rename=RENAME.get(fmt), helps=HELPS, title=f"{fmt} (generated from {cls.__name__})")
    p.add_argument("--task", default=None, choices=["causal-lm", "classification", "encoder"])
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints: trusted sources only")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the result as JSON")


# fields whose flag has another name: GGUF's embedding type keeps its prefix; ExecuTorch's int4 group size
# shares --block-size with ONNX's
RENAME = {"gguf": {"embedding_type": "gguf_embedding_type"}, "executorch": {"group_size": "block_size"},
          "litert": {"group_size": "block_size"}}
HELPS = {
    "gguf_type": "type of the 2-D weights; edgellm's 4/8-bit codes go in as they are",
    "embedding_type": "type of the token embedding / output head (none: q8_0 for 8/4-bit files, else --gguf-type)",
    "requantize": "allow re-encoding quantized weights whose grid is not the GGUF type's (listed in the report)",
    "variant": "weights: fp32, int8 (ONNX dynamic int8 / ExecuTorch 8da8w) or int4 (MatMulNBits / 8da4w); "
               "LiteRT also w8 (weight-only int8)",
    "block_size": "int4 block (group) size, ONNX, ExecuTorch and LiteRT",
    "symmetric": "ONNX int4: symmetric blocks (--no-symmetric: with zero points)",
    "accuracy_level": "ONNX MatMulNBits compute: 4 = int8 activations, 0 = fp32",
    "opset": "ONNX opset of the graph",
    "fuse": "ONNX classifiers: fuse encoder blocks for onnxruntime",
    "max_len": "ExecuTorch / LiteRT static KV-cache positions",
}


def configs() -> dict:
    """format -> its export config class."""
    from ..exporters import EXPORTERS, export_config

    return {fmt: type(export_config(fmt)) for fmt in EXPORTERS}


def config_of(args):
    """The export config for ``--format`` from the generated flags."""
    from .flags import config_from_args

    return config_from_args(configs()[args.format], args, rename=RENAME.get(args.format))


def run(args) -> int:
    from ..exporters import export
    from ..models import load
    from ..report.table import format_table, human_bytes

    config = config_of(args)          # a bad option fails before the (slow) load
    loaded = load(args.model, **load_kwargs(args))
    r = export(loaded, config, args.out, force=args.force, verify=args.verify, threads=args.threads)
    row = {"artifact": str(r.path), "format": r.format, "runtime": r.runtime, "size": human_bytes(r.file_bytes),
           "seconds": round(r.seconds, 1)}
    v = r.verification
    if v and "max_prob_diff" in v:       # classifiers (onnx): class probabilities on fixed sentences
        row.update({"max |Δprob|": v["max_prob_diff"], "label agreement": v["label_agreement"], "verified": "yes"})
    elif v:
        row.update({"ppl (torch)": v["ppl"]["reference"], f"ppl ({r.runtime})": v["ppl"]["artifact"],
                    "KL": v["ppl"]["kl"], "top-1": v["ppl"]["top1"], "max |Δlogit|": v["prompts"]["max_abs_diff"],
                    "verified": "yes"})
    else:
        row["verified"] = "no (--no-verify)"
    print(format_table([row]))
    if r.details.get("requantized"):
        print(f"re-quantized (grid did not match {r.details.get('gguf_type')}): {', '.join(r.details['requantized'])}")
    if r.details.get("fallbacks"):
        print(f"fallback types (rows {r.details.get('gguf_type')} cannot tile, as llama.cpp does): "
              + ", ".join(f"{k} {v.split(' -> ')[1]}" for k, v in r.details["fallbacks"].items()))
    if r.details.get("gptq"):
        g = r.details["gptq"]
        pre = f", AWQ prescale on {g['prescale']['folds']} folds" if g.get("prescale") else ""
        print(f"gptq: {g['tensors']} tensors onto their types in {g['seconds']:.1f} s "
              f"({g['calibration_tokens']:,} calibration tokens{pre})")
    if r.details.get("mix"):
        from ..exporters.gguf_mix import summary

        print(summary(r.details["mix"]) + " (per tensor: --json)")
    emit_json(args, r.to_dict())
    return 0
