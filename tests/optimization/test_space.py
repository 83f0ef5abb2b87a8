"""The search space's rows and the same-weights shortcut (optimization/pick.py): a runtime predicted to lose on the
same weights is skipped."""

from edgellm.optimization.pick import same_weights_dominator
from edgellm.optimization.space import Row


def row(recipe, runtime, decode, size, model="m", status="screened"):
    return Row(model=model, recipe=recipe, runtime=runtime, kind="w8", status=status,
               predicted={"decode_tok_s": decode, "size_bytes": size})


def test_faster_and_no_larger_same_weights_dominates():
    torch_w8, cpp_w8 = row("w8", "torch", 20.0, 200), row("w8", "llama.cpp", 98.0, 160)
    cpp_w4 = row("w4", "llama.cpp", 140.0, 110)                    # other weights never count
    rows = [torch_w8, cpp_w8, cpp_w4]
    assert same_weights_dominator(torch_w8, rows, 1.25) is cpp_w8
    assert same_weights_dominator(cpp_w8, rows, 1.25) is None


def test_margin_size_model_and_skipped_rows():
    a, b = row("w8", "torch", 20.0, 200), row("w8", "llama.cpp", 24.0, 160)
    assert same_weights_dominator(a, [a, b], 1.25) is None          # only 1.2× faster
    assert same_weights_dominator(a, [a, b], 1.1) is b
    big = row("w8", "llama.cpp", 98.0, 300)
    assert same_weights_dominator(a, [a, big], 1.25) is None        # faster but larger
    other_model = row("w8", "llama.cpp", 98.0, 100, model="n")
    assert same_weights_dominator(a, [a, other_model], 1.25) is None
    gone = row("w8", "llama.cpp", 98.0, 100, status="skipped")
    assert same_weights_dominator(a, [a, gone], 1.25) is None
