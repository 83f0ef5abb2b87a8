"""``edgellm export MODEL --format gguf --out PATH``: write an artifact for an on-device runtime, verified on it."""

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
    g = p.add_argument_group("gguf")
    g.add_argument("--gguf-type", default="f16", choices=["f32", "f16", "q8_0", "q4_0", "q4_1"],
                   help="type of the 2-D weights (default f16); edgellm's 4/8-bit codes go in as they are")
    g.add_argument("--gguf-embedding-type", default=None, choices=["f32", "f16", "q8_0", "q4_0", "q4_1"],
                   help="type of the token embedding / output head (default: q8_0 for 8/4-bit files)")
    g.add_argument("--requantize", action="store_true",
                   help="allow re-encoding quantized weights whose grid is not the GGUF type's (listed in the report)")
    g = p.add_argument_group("onnx / executorch")
    g.add_argument("--variant", default="fp32", choices=["fp32", "int8", "int4"],
                   help="weights: fp32, int8 (ONNX dynamic int8 / ExecuTorch 8da8w) or int4 (MatMulNBits / 8da4w)")
    g.add_argument("--block-size", type=int, default=32, help="int4 block (group) size (default 32)")
    g.add_argument("--max-len", type=int, default=512, help="ExecuTorch static KV-cache positions (default 512)")
    p.add_argument("--task", default=None, choices=["causal-lm", "classification", "encoder"])
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints: trusted sources only")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the result as JSON")


def format_options(args) -> dict:
    """The exporter's own options, by format."""
    return {
        "gguf": {"gguf_type": args.gguf_type, "embedding_type": args.gguf_embedding_type, "requantize": args.requantize},
        "onnx": {"variant": args.variant, "block_size": args.block_size},
        "executorch": {"variant": args.variant, "group_size": args.block_size, "max_len": args.max_len},
    }.get(args.format, {})


def run(args) -> int:
    from ..exporters import export
    from ..models import load
    from ..report.table import format_table, human_bytes

    loaded = load(args.model, **load_kwargs(args))
    r = export(loaded, args.format, args.out, force=args.force, verify=args.verify, threads=args.threads,
               **format_options(args))
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
    emit_json(args, r.to_dict())
    return 0
