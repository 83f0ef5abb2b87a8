"""Unstructured pruning end to end: exact sparsity in the model, compact sparse folders, exact reload, CLI."""

import json

import pytest
import torch
from conftest import run_cli

from edgellm.calibconfig import CalibConfig
from edgellm.errors import EdgeLLMError
from edgellm.fileio import dir_bytes
from edgellm.models import load
from edgellm.pruning import PruneConfig, prune
from edgellm.pruning.masks import is_nm
from edgellm.pruning.storage import decode, encode, pack_bits, save_sparse, unpack_bits

CALIB = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(2))


def test_bits_round_trip():
    for n in (1, 7, 8, 9, 100):
        m = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
        assert torch.equal(unpack_bits(pack_bits(m), n), m)
    t = torch.randn(8, 16) * (torch.rand(8, 16) > 0.6)
    enc = encode(t)
    assert enc is not None and torch.equal(decode(enc[".__values"], enc[".__bitmask"], t.shape), t)
    assert encode(torch.randn(8, 16)) is None        # dense: stored as is


@pytest.mark.parametrize("cfg", [PruneConfig(method="magnitude", sparsity=0.5), PruneConfig(method="wanda", sparsity=0.75),
                                 PruneConfig(method="sparsegpt", sparsity=0.5), PruneConfig(method="wanda", pattern="2:4"),
                                 PruneConfig(method="sparsegpt", pattern="4:8"), PruneConfig(method="magnitude", pattern="2:4")],
                         ids=lambda c: f"{c.method}-{c.pattern or c.sparsity}")
def test_prune_save_load_is_exact(tiny_llama, tmp_path, cfg):
    loaded = load(tiny_llama)
    _, r = prune(loaded, cfg, calib_ids=CALIB, progress=False)
    assert r.n_linears == 21 and r.achieved_sparsity == pytest.approx(cfg.effective_sparsity, abs=1e-9)
    for name, p in loaded.model.named_parameters():
        if "layers" in name and p.dim() == 2:
            assert (p == 0).float().mean().item() >= cfg.effective_sparsity - 1e-9
            if cfg.pattern:
                assert is_nm(p, *cfg.nm)
    out = save_sparse(loaded, tmp_path / "sparse")
    again = load(out)
    assert again.meta.edgellm["format"] == "sparse"
    for (n1, a), (n2, b) in zip(loaded.model.state_dict().items(), again.model.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=IDS).logits, again.model(input_ids=IDS).logits)


def test_size_on_disk_falls_with_sparsity(tiny_llama, tmp_path):
    sizes = []
    for s in (0.0, 0.5, 0.75):
        loaded = load(tiny_llama)
        if s:
            prune(loaded, PruneConfig(method="magnitude", sparsity=s), progress=False)
        sizes.append(dir_bytes(save_sparse(loaded, tmp_path / f"s{s}")))
    assert sizes[0] > sizes[1] > sizes[2]
    # the pruned linears hold 2/3 of the weights; at 50% each costs 17 bits instead of 32
    assert sizes[1] < 0.8 * sizes[0]


def test_include_exclude_and_wanda_with_text(tiny_llama, text_file):
    loaded = load(tiny_llama)
    cfg = PruneConfig(method="wanda", sparsity=0.5, include=("*.mlp.*",), exclude=("*.layers.0.*",),
                      calib=CalibConfig(str(text_file), samples=2, seq_len=16))
    _, r = prune(loaded, cfg, progress=False)
    assert r.n_linears == 6 and r.calib_tokens == 32
    blocks = loaded.model.model.layers
    assert (blocks[0].mlp.up_proj.weight != 0).all() and (blocks[1].self_attn.q_proj.weight != 0).all()
    assert (blocks[1].mlp.up_proj.weight == 0).float().mean() == 0.5


def test_bad_inputs(tiny_llama, tiny_bert):
    loaded = load(tiny_llama)
    with pytest.raises(EdgeLLMError, match="does not divide the input dimension 96"):
        prune(loaded, PruneConfig(method="magnitude", pattern="2:5"), progress=False)
    assert (loaded.model.model.layers[0].mlp.up_proj.weight != 0).all()   # nothing changed
    with pytest.raises(EdgeLLMError, match="no linear layer matches"):
        prune(loaded, PruneConfig(method="magnitude", include=("nothing*",)), progress=False)
    with pytest.raises(EdgeLLMError, match="needs calibration data"):
        prune(loaded.model, PruneConfig(method="wanda"), progress=False)


def test_cli_prune_unstructured_and_structured(tiny_llama, tmp_path, text_file):
    code, out, err = run_cli("prune", tiny_llama, "--method", "magnitude", "--pattern", "2:4", "--out", tmp_path / "a",
                             "--json", tmp_path / "a.json")
    assert code == 0, err
    assert "no sparse kernel" in out and "saves size on disk, not time" in out
    assert json.loads((tmp_path / "a.json").read_text())["result"]["achieved_sparsity"] == 0.5
    assert load(tmp_path / "a").meta.edgellm["prune"]["pattern"] == "2:4"
    code, out, err = run_cli("prune", tiny_llama, "--structure", "depth", "--ratio", "0.34", "--calib-samples", "2",
                             "--calib-len", "16", "--calib", text_file, "--out", tmp_path / "b")
    assert code == 0, err
    assert "from_pretrained" in out
    code, out, err = run_cli("prune", tiny_llama, "--method", "sparsegpt", "--sequential", "--calib-samples", "2",
                             "--calib-len", "16", "--calib", text_file, "--out", tmp_path / "s", "--json", tmp_path / "s.json")
    assert code == 0, err
    rep = json.loads((tmp_path / "s.json").read_text())
    assert rep["config"]["sequential"] is True and rep["result"]["achieved_sparsity"] == 0.5
    code, _, err = run_cli("prune", tiny_llama, "--sparsity", "1.5", "--out", tmp_path / "c")
    assert code == 2 and "outside [0, 1)" in err and "Traceback" not in err
    code, _, err = run_cli("prune", tiny_llama, "--pattern", "4:2", "--out", tmp_path / "c")
    assert code == 2 and "N ≥ M" in err
    code, _, err = run_cli("prune", tiny_llama, "--method", "magnitude", "--out", tmp_path / "a")
    assert code == 2 and "already exists" in err


def test_recipe_prune_section(tiny_llama):
    from edgellm.recipe import apply_recipe, recipe_from_dict

    rec = recipe_from_dict({"name": "mag-2of4", "prune": {"method": "magnitude", "pattern": "2:4"}})
    loaded = load(tiny_llama)
    res = apply_recipe(loaded, rec, progress=False)
    assert res["prune"].achieved_sparsity == 0.5
    assert is_nm(loaded.model.model.layers[1].mlp.down_proj.weight, 2, 4)


def test_dense_save_of_a_reloaded_sparse_model_is_plain(tiny_llama, tmp_path):
    from edgellm.models import save

    loaded = load(tiny_llama)
    prune(loaded, PruneConfig(method="magnitude", sparsity=0.5), progress=False)
    again = load(save_sparse(loaded, tmp_path / "sparse"))
    plain = load(save(again, tmp_path / "dense"))
    assert plain.meta.edgellm == {}
    with torch.no_grad():
        assert torch.equal(plain.model(input_ids=IDS).logits, loaded.model(input_ids=IDS).logits)


def test_public_api_call_after_the_package_is_imported(tiny_llama):
    import edgellm
    import edgellm.pruning.config  # noqa: F401  (binds edgellm.pruning to the package)

    loaded = load(tiny_llama)
    _, r = edgellm.prune(loaded, edgellm.PruneConfig(method="magnitude", sparsity=0.25))
    assert isinstance(r, edgellm.PruneResult) and r.achieved_sparsity == 0.25
