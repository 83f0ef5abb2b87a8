"""Structured pruning: the result loads with plain from_pretrained and equals the masked original."""

import pytest
import torch

from edgellm.calibconfig import CalibConfig
from edgellm.calibrate import find_blocks
from edgellm.errors import EdgeLLMError
from edgellm.models import count_params, load, save
from edgellm.pruning import PruneConfig, prune
from edgellm.pruning.structured import angular_distance, remove_layers

CALIB = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def _masked_original(path, structure, removed):
    """The unpruned model with the removed units' output paths zeroed (so they contribute nothing)."""
    m = load(path).model
    blocks = find_blocks(m)[1]
    hd = blocks[0].self_attn.head_dim
    if structure == "depth":   # a block whose o_proj and down_proj are zero is the identity (residual only)
        for i in removed["layers"]:
            blocks[i].self_attn.o_proj.weight.zero_()
            blocks[i].mlp.down_proj.weight.zero_()
    elif structure == "width":
        for i, chans in removed["channels"].items():
            blocks[int(i)].mlp.down_proj.weight[:, chans] = 0
    else:
        for i, heads in removed["heads"].items():
            for h in heads:
                blocks[int(i)].self_attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
    return m


@pytest.mark.parametrize("cfg", [
    PruneConfig(structure="depth", ratio=0.34),
    PruneConfig(structure="width", ratio=0.25),
    PruneConfig(structure="width", ratio=0.5, method="magnitude"),
    PruneConfig(structure="heads", ratio=0.5),
], ids=["depth", "width-wanda", "width-magnitude", "heads-gqa"])
@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_structured_model_loads_with_from_pretrained_and_matches_masked_original(request, family, tmp_path, cfg):
    """Llama, and Gemma (head_dim 32 ≠ hidden / heads, GELU MLP, norms 1 + w, 2 layers)."""
    from transformers import AutoModelForCausalLM

    tiny_llama = request.getfixturevalue(f"tiny_{family}")
    loaded = load(tiny_llama)
    before = count_params(loaded.model)
    _, r = prune(loaded, cfg, calib_ids=CALIB, progress=False)
    assert r.params_after < before and r.params_after == count_params(loaded.model)
    out = save(loaded, tmp_path / "pruned")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()   # no edgellm involved in loading
    ref = _masked_original(tiny_llama, cfg.structure, r.removed)
    with torch.no_grad():
        got, want = plain(input_ids=IDS).logits, ref(input_ids=IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert count_params(plain) == r.params_after
    # decoding with the KV cache also works on the smaller model
    gen = plain.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 9)


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from conftest import make_tiny_decoder

    return make_tiny_decoder(tmp_path_factory.mktemp("gemma") / "gemma", "gemma")


def test_heads_removed_uniformly_per_kv_group(tiny_llama):
    loaded = load(tiny_llama)          # 4 query heads, 2 KV groups of 2
    _, r = prune(loaded, PruneConfig(structure="heads", ratio=0.5), calib_ids=CALIB, progress=False)
    cfg = loaded.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 2, 24)
    for heads in r.removed["heads"].values():
        assert sorted(h // 2 for h in heads) == [0, 1]   # one from each group


def test_mha_heads_take_their_kv_heads_along(tmp_path):
    from conftest import make_tiny_llama
    from transformers import AutoModelForCausalLM

    path = make_tiny_llama(tmp_path / "mha", num_key_value_heads=4)
    loaded = load(path)
    _, r = prune(loaded, PruneConfig(structure="heads", ratio=0.25), calib_ids=CALIB, progress=False)
    assert (loaded.model.config.num_attention_heads, loaded.model.config.num_key_value_heads) == (3, 3)
    plain = AutoModelForCausalLM.from_pretrained(save(loaded, tmp_path / "out")).eval()
    ref = _masked_original(path, "heads", r.removed)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, ref(input_ids=IDS).logits, rtol=1e-4, atol=1e-4)


def test_depth_drops_the_lowest_scoring_layers(tiny_llama):
    loaded = load(tiny_llama)
    _, r = prune(loaded, PruneConfig(structure="depth", ratio=0.34), calib_ids=CALIB, progress=False)
    assert len(r.scores) == 3 and r.removed["layers"] == [min(range(3), key=r.scores.__getitem__)]
    assert loaded.model.config.num_hidden_layers == 2
    assert float(angular_distance(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]]))) == pytest.approx(0, abs=1e-3)


def test_parameter_and_byte_budgets(tiny_llama):
    loaded = load(tiny_llama)
    budget = count_params(loaded.model) - 20000
    _, r = prune(loaded, PruneConfig(structure="width", max_params=budget), calib_ids=CALIB, progress=False)
    assert r.params_after <= budget
    per_channel = 3 * 96 * 3
    assert r.params_after + per_channel > budget          # the fewest channels that meet the budget
    loaded = load(tiny_llama)
    nbytes = 4 * count_params(loaded.model) - 250_000
    _, r = prune(loaded, PruneConfig(structure="depth", max_bytes=nbytes), calib_ids=CALIB, progress=False)
    assert r.bytes_after <= nbytes and loaded.model.config.num_hidden_layers == 2


def test_structured_uses_calibration_text(tiny_llama, text_file):
    loaded = load(tiny_llama)
    cfg = PruneConfig(structure="width", ratio=0.25, calib=CalibConfig(str(text_file), samples=3, seq_len=16))
    _, r = prune(loaded, cfg, progress=False)
    assert r.calib_tokens == 48 and loaded.model.config.intermediate_size == 144


@pytest.mark.parametrize("cfg,needle", [
    (PruneConfig(structure="depth", ratio=0.9), "remove all 3 layers"),
    (PruneConfig(structure="heads", ratio=0.9), "remove all 4 attention heads"),
    (PruneConfig(structure="width", max_params=1000), "remove all 192 MLP channels"),
    (PruneConfig(structure="heads", ratio=0.1), "removes no attention heads"),
])
def test_ratio_that_removes_everything_is_refused(tiny_llama, cfg, needle):
    loaded = load(tiny_llama)
    with pytest.raises(EdgeLLMError) as e:
        prune(loaded, cfg, calib_ids=CALIB, progress=False)
    assert needle in str(e.value)
    assert loaded.model.config.num_hidden_layers == 3     # untouched
    with pytest.raises(EdgeLLMError, match="leave none"):
        remove_layers(loaded.model, [0, 1, 2])


def test_unsupported_architecture_lists_the_supported_ones(tiny_bert):
    with pytest.raises(EdgeLLMError) as e:
        prune(load(tiny_bert), PruneConfig(structure="width", ratio=0.25), calib_ids=CALIB, progress=False)
    assert "'bert'" in str(e.value) and "llama" in str(e.value) and "qwen2" in str(e.value)


def test_qwen2_with_qkv_bias(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "q")
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    _, r = prune(m, PruneConfig(structure="heads", ratio=0.5), calib_ids=CALIB, progress=False)
    prune(m, PruneConfig(structure="width", ratio=0.25), calib_ids=CALIB, progress=False)
    m.save_pretrained(tmp_path / "p")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, m(input_ids=IDS).logits)
    assert again.config.num_attention_heads == 2 and again.config.intermediate_size == 96
