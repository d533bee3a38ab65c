"""R-Adapter and DRM endpoints of the embedded world (adawise.embedded.r_adapter, adawise.embedded.drm).

Unit tests on constructed modules (no data), then the tiny world's three endpoints in one temporary cache
(Fashion-MNIST needed; skipped where absent).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from fashion_data import needs_data  # tests/ is on sys.path under pytest

from streams import fashion

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 24, "layers": 2, "head_width": 12},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}


def _clip():
    from adawise.models.clip import create_clip

    torch.manual_seed(0)
    return create_clip(TINY_CLIP)


# --------------------------------------------------------------------------------------- R-Adapter


def test_merged_adapters_give_the_adapter_models_outputs():
    from adawise.embedded.r_adapter import add_adapters, merge_adapters
    from adawise.models.clip import encode_text

    clip, tokenizer = _clip()
    gen = torch.Generator().manual_seed(1)
    adapters = add_adapters(clip.visual.transformer, drop=0.2) + add_adapters(clip.transformer, drop=0.2)
    assert len(adapters) == 2 * (2 + 2)
    with torch.no_grad():
        for a in adapters:
            a.weight.copy_(0.1 * torch.randn(a.weight.shape, generator=gen))
    clip.eval()  # no adapter dropping at inference
    x = torch.rand(4, 3, 28, 28, generator=gen)
    tokens = tokenizer(["a photo of a coat.", "long sleeves, front zip or buttons, collar."])
    with torch.no_grad():
        image, text = clip.encode_image(x), encode_text(clip, tokens)
        keys = set(clip.state_dict())
        merge_adapters(clip.visual.transformer)
        merge_adapters(clip.transformer)
        merged_image, merged_text = clip.encode_image(x), encode_text(clip, tokens)
    torch.testing.assert_close(merged_image, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged_text, text, atol=1e-5, rtol=0)
    assert not any("ls_" in k for k in clip.state_dict())  # plain open_clip keys again
    assert set(clip.state_dict()) == {k for k in keys if ".ls_" not in k}
    assert set(clip.state_dict()) == set(_clip()[0].state_dict())


def test_merge_scale_zero_restores_the_pretrained_weights_and_scale_is_linear():
    from adawise.embedded.r_adapter import add_adapters, merge_adapters

    clip, _ = _clip()
    reference = {k: v.clone() for k, v in clip.state_dict().items()}
    adapters = add_adapters(clip.visual.transformer)
    with torch.no_grad():
        for a in adapters:
            a.weight.normal_(0, 0.1)
    half = _clip()[0]
    half_adapters = add_adapters(half.visual.transformer)
    with torch.no_grad():
        for a, b in zip(adapters, half_adapters, strict=True):
            b.weight.copy_(0.5 * a.weight)
    zero = copy.deepcopy(clip)
    merge_adapters(zero.visual.transformer, scale=0.0)
    for k, v in zero.state_dict().items():
        assert torch.equal(v, reference[k]), k
    merge_adapters(clip.visual.transformer, scale=0.5)
    merge_adapters(half.visual.transformer, scale=1.0)
    for k, v in clip.state_dict().items():
        torch.testing.assert_close(v, half.state_dict()[k])


def test_adapter_dropping_only_in_training():
    from adawise.embedded.r_adapter import LinearAdapter

    adapter = LinearAdapter(4, drop=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapter.weight.copy_(torch.eye(4))
    x = torch.ones(64, 3, 4)
    adapter.train()
    out = adapter(x)
    rows = out[:, 0, 0]
    assert set(rows.tolist()) == {1.0, 3.0}  # dropped: x; kept: x + x / (1 - p)
    adapter.eval()
    assert torch.equal(adapter(x), 2 * x)
    with pytest.raises(ValueError, match="drop"):
        LinearAdapter(4, drop=1.0)


def test_ema_accumulates_from_the_initial_weights():
    from adawise.embedded.r_adapter import AdapterEMA, LinearAdapter

    adapter = LinearAdapter(2)
    ema = AdapterEMA([adapter], momentum=0.9)
    with torch.no_grad():
        adapter.weight.fill_(1.0)
    ema.update()
    ema.update()
    ema.copy_to()
    torch.testing.assert_close(adapter.weight.detach(), torch.full((2, 2), 1 - 0.9**2))


def test_mpm_nce_hand_computed_and_reduces_to_infonce():
    from adawise.embedded.r_adapter import mpm_nce_loss

    # two images, two captions, different classes, orthogonal unit features
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    loss = mpm_nce_loss(f, f, y, temperature=0.5, margin=0.1, smoothing=0.0)
    # row: positive logit 1/0.5 = 2, negative (0 + 0.1)/0.5 = 0.2 -> -log(e^2 / (e^2 + e^0.2))
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0.2)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # no margin, no smoothing, all classes distinct: CLIP's InfoNCE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.07
    clip_loss = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    torch.testing.assert_close(mpm_nce_loss(a, b, torch.arange(6), 0.07, 0.0, 0.0), clip_loss)
    # same-class pairs are positives: swapping two same-class captions changes nothing
    y = torch.tensor([0, 0, 1, 2, 2, 3])
    swapped = b[[1, 0, 2, 4, 3, 5]]
    torch.testing.assert_close(mpm_nce_loss(a, b, y), mpm_nce_loss(a, swapped, y))


# --------------------------------------------------------------------------------------------- DRM


def test_worst_case_risk_hand_computed_and_reads_only_the_core_head():
    from adawise.embedded.drm import drm_loss, worst_case_risk

    core_logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    q = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert float(worst_case_risk(core_logits, q)) == pytest.approx(expected, rel=1e-6)

    default_logits = torch.tensor([[2.0, 0.0]])
    labels = torch.tensor([0])
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert float(drm_loss(default_logits, core_logits, labels, q, lam=0.5)) == pytest.approx(ce + 0.5 * expected)
    # the worst-case term changes with the core-feature head and its zero-shot prediction, not the default head
    base = float(drm_loss(default_logits, core_logits, labels, q, lam=1.0) - F.cross_entropy(default_logits, labels))
    other_default = torch.tensor([[-1.0, 5.0]])
    assert float(drm_loss(other_default, core_logits, labels, q, 1.0)
                 - F.cross_entropy(other_default, labels)) == pytest.approx(base)
    assert float(worst_case_risk(torch.tensor([[1.0, 0.0]]), q)) != pytest.approx(expected)
    assert float(worst_case_risk(core_logits, torch.tensor([[0.0, 1.0]]))) == pytest.approx(-math.log(0.75))


def test_combined_head_is_the_log_linear_mix_of_the_two_heads():
    from adawise.embedded.drm import combine_heads

    gen = torch.Generator().manual_seed(0)
    default, core = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    weight, bias = combine_heads(default, core, beta=0.3)
    f = torch.randn(4, 5, generator=gen)
    mixed = F.linear(f, weight, bias)
    torch.testing.assert_close(mixed, 0.3 * default(f) + 0.7 * core(f))
    # softmax of the mixed logits = normalised weighted geometric mean of the two heads' probabilities
    geo = torch.exp(0.3 * F.log_softmax(default(f), 1) + 0.7 * F.log_softmax(core(f), 1))
    torch.testing.assert_close(F.softmax(mixed, 1), geo / geo.sum(1, keepdim=True))


def test_core_descriptions_fit_the_text_context():
    from adawise.embedded.train import CORE_DESCRIPTIONS, description_caption
    from adawise.embedded.world import EmbeddedRecipe

    assert list(CORE_DESCRIPTIONS) == list(fashion.CLASS_NAMES)
    _, tokenizer = _clip()
    for name in fashion.CLASS_NAMES:
        for with_name in (False, True):
            tokens = tokenizer([description_caption(name, with_name)])[0]
            assert int((tokens > 0).sum()) <= EmbeddedRecipe().context_length  # never truncated


# ----------------------------------------------------------------------------------- the endpoints


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The tiny world's three endpoints, trained into one temporary cache; pretraining is counted."""
    from adawise.embedded import stages
    from adawise.embedded import world as embedded

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAWISE_CACHE", str(cache))
    calls = []
    original = stages.pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    mp.setattr(stages, "pretrain", counting)
    try:
        out = {name: embedded.load_embedded(f"tiny:{name}", progress=False) for name in embedded.ENDPOINTS}
        yield out, calls
    finally:
        mp.undo()


@needs_data
def test_each_endpoint_loads_into_weight_space_with_the_shared_zeroshot(worlds):
    from adawise.core.weights import WeightSpace
    from adawise.models.checkpoints import weights_hash

    out, calls = worlds
    assert len(calls) == 1  # pretraining ran once, for the first endpoint; the others reused it
    assert [w.info["pretrained_trained"] for w in out.values()] == [True, False, False]
    hashes = {weights_hash(w.zeroshot) for w in out.values()}
    assert len(hashes) == 1  # the same zero-shot model for every endpoint
    assert len({w.key for w in out.values()}) == 3
    x = out["e2e"].test_images[:6]
    for name, world in out.items():
        assert world.recipe.endpoint == name and world.info["endpoint"] == name
        zs, ft = world.zeroshot, world.finetuned
        assert {k: v.shape for k, v in zs.state_dict().items()} == {k: v.shape for k, v in ft.state_dict().items()}
        assert not torch.equal(zs.head.weight, ft.head.weight) or not torch.equal(
            zs.visual.conv1.weight, ft.visual.conv1.weight)
        with torch.no_grad():
            expect0, expect1 = zs(x), ft(x)
            live = copy.deepcopy(zs)
            space = WeightSpace(live, zs.state_dict(), ft.state_dict())
            space.set_alpha(0.0)
            torch.testing.assert_close(live(x), expect0, atol=1e-5, rtol=1e-5)
            space.set_alpha(1.0)
            torch.testing.assert_close(live(x), expect1, atol=1e-5, rtol=1e-5)
        acc = world.info["clean_accuracy"]
        assert 0 <= acc["zeroshot"] <= 1 and 0 <= acc["finetuned"] <= 1
        assert world.info["finetune_seconds"] >= 0 and world.info["finetune_loss"]
    assert 0 < out["r-adapter"].info["tuned_fraction"] < out["r-adapter"].info["tuned_fraction_of_transformer_blocks"]
    # R-Adapter freezes everything but its adapters: only out_proj / c_proj and the text-derived head move
    zs, ft = out["r-adapter"].zeroshot.state_dict(), out["r-adapter"].finetuned.state_dict()
    moved = {k for k in zs if not torch.equal(zs[k], ft[k])}
    assert moved and all(("out_proj" in k or "c_proj" in k or k.startswith("head.")) for k in moved)
    assert "head.weight" in moved
    # its head speaks at the temperature MPM-NCE trained it at (1 / tau), not at the CLIP's logit scale
    recipe = out["r-adapter"].recipe
    norms = out["r-adapter"].finetuned.head.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 1.0 / recipe.radapter_temperature), rtol=1e-4, atol=0)


@needs_data
def test_endpoint_worlds_reload_from_the_cache(worlds, monkeypatch):
    from adawise.embedded.world import load_embedded
    from adawise.models.checkpoints import weights_hash

    out, _ = worlds
    world = out["r-adapter"]
    monkeypatch.setenv("ADAWISE_CACHE", str(world.cache_dir.parent))
    again = load_embedded("tiny:r-adapter", progress=False)
    assert again.info["trained"] is False and again.key == world.key
    assert weights_hash(again.finetuned) == weights_hash(world.finetuned)
    assert again.info["tuned_fraction"] == world.info["tuned_fraction"]


def test_keys_depend_only_on_the_fields_that_matter():
    from adawise.embedded.world import EmbeddedRecipe, pretrain_key, world_key

    fp = "data"
    tiny = EmbeddedRecipe.tiny()
    e2e, radapter, drm = (tiny.with_endpoint(n) for n in ("e2e", "r-adapter", "drm"))
    changed = dataclasses.replace(tiny, radapter_lr=1e-3, radapter_drop=0.0)
    assert world_key(changed.with_endpoint("e2e"), fp) == world_key(e2e, fp)
    assert world_key(changed.with_endpoint("drm"), fp) == world_key(drm, fp)
    assert world_key(changed.with_endpoint("r-adapter"), fp) != world_key(radapter, fp)
    assert world_key(dataclasses.replace(drm, drm_lambda=2.0), fp) != world_key(drm, fp)
    assert len({world_key(r, fp) for r in (e2e, radapter, drm)}) == 3
    assert len({pretrain_key(r, fp) for r in (e2e, radapter, drm, changed)}) == 1
    assert pretrain_key(dataclasses.replace(tiny, finetune_lr=1.0, finetune_epochs=3), fp) == pretrain_key(tiny, fp)
    assert pretrain_key(dataclasses.replace(tiny, p_description_caption=0.1), fp) != pretrain_key(tiny, fp)
    assert world_key(dataclasses.replace(tiny, p_description_caption=0.1), fp) != world_key(tiny, fp)
