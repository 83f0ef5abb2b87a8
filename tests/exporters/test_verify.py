"""The verification limits themselves (export/verify.py), on hand-made results."""

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.exporters.verify import TOLERANCES, Tolerance, _failures


def result(prompt_kl, text_kl, ppl_rel=0.0, top1=1.0):
    return {"tokenizer_agrees": True,
            "prompts": {"kl": prompt_kl, "top1": top1, "max_abs_diff": 0.0, "max_abs_rel": 0.0},
            "ppl": {"kl": text_kl, "top1": top1, "reference": 10.0, "artifact": 10.0 * (1 + ppl_rel),
                    "relative_diff": ppl_rel}}


def test_int8_act_prompt_kl_has_its_own_limit():
    tol = TOLERANCES["int8-act"]
    # what SmolLM2 Q4_0 through llama.cpp measured: prompts 0.031, text 0.004, ppl +0.5%
    assert _failures(result(0.031, 0.004, 0.005), tol) == []
    assert _failures(result(0.07, 0.004), tol) == ["KL on prompts 0.07 > 0.06"]
    assert _failures(result(0.01, 0.03), tol) == ["KL on ppl 0.03 > 0.02"]
    assert len(_failures(result(0.01, 0.01, 0.03), tol)) == 1


def test_prompt_kl_defaults_to_max_kl():
    tol = Tolerance(max_kl=1e-3, min_top1=0.9, max_ppl_rel=0.01)
    assert tol.prompt_kl == 1e-3
    assert _failures(result(2e-3, 0.0), tol) == ["KL on prompts 0.002 > 0.001"]


def test_invalid_tolerance():
    with pytest.raises(EdgeLLMError):
        Tolerance(max_kl=0.1, min_top1=0.9, max_ppl_rel=0.01, max_prompt_kl=-1)
