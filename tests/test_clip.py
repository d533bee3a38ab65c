"""CLIP classifiers from a tiny random open_clip model: zero-shot head, normalisation, loading pairs."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

import adawise
from adawise.core.weights import StateDictMismatchError
from adawise.models import clip as clipmod
from adawise.models.clip import CLIPClassifier, build_classifier, create_clip, resolve_templates, zeroshot_head


def hand_head(clip_model, tokenizer, classes, templates) -> torch.Tensor:
    """The CLIP zero-shot head computed step by step, one class at a time."""
    rows = []
    with torch.no_grad():
        for name in classes:
            feats = []
            for template in templates:
                emb = clip_model.encode_text(tokenizer([template.format(name)]))[0]
                feats.append(emb / emb.norm())
            mean = torch.stack(feats).mean(0)
            rows.append(mean / mean.norm())
        return torch.stack(rows) * clip_model.logit_scale.exp()


def test_zeroshot_head_equals_hand_computation(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates) -> None:
    expected = hand_head(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    head = zeroshot_head(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    assert head.shape == (5, 32)
    torch.testing.assert_close(head, expected, rtol=1e-5, atol=1e-5)
    # rows have norm logit_scale.exp() (= 1/0.07 at init) and differ between classes
    torch.testing.assert_close(head.norm(dim=1), torch.full((5,), float(tiny_clip.logit_scale.detach().exp())))
    assert not torch.allclose(head[0], head[1])

    clf = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    torch.testing.assert_close(clf.head.weight, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(clf.head.bias, torch.zeros(5))


def test_callable_templates_and_empty_inputs(tiny_clip, tiny_tokenizer, tiny_classes) -> None:
    head = zeroshot_head(tiny_clip, tiny_tokenizer, tiny_classes, [lambda c: f"a photo of a {c}."])
    expected = hand_head(tiny_clip, tiny_tokenizer, tiny_classes, ["a photo of a {}."])
    torch.testing.assert_close(head, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="class_names"):
        zeroshot_head(tiny_clip, tiny_tokenizer, [], ["{}"])
    with pytest.raises(ValueError, match="templates"):
        zeroshot_head(tiny_clip, tiny_tokenizer, tiny_classes, [])


def test_normalisation_is_folded_into_the_model(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates,
                                                images) -> None:
    clf = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = tiny_clip.encode_image((images - mean) / std, normalize=True)
        expected = feats @ clf.head.weight.T
        got = clf(images)
    assert got.shape == (6, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the classifier owns a copy of the image tower: changing the CLIP model afterwards has no effect
    with torch.no_grad():
        tiny_clip.visual.proj.mul_(2.0)
        torch.testing.assert_close(clf(images), got)
    # mean / std / mask are configuration, not weights
    assert all(k.startswith(("visual.", "head.")) for k in clf.state_dict())


def test_encode_returns_unit_norm_features(tiny_pair, images) -> None:
    zs, _ = tiny_pair
    with torch.no_grad():
        feats = zs.encode(images)
        assert feats.shape == (6, 32)
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(6))
        torch.testing.assert_close(zs.classify(feats), zs(images))


def test_class_mask_selects_columns(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, images) -> None:
    full = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    mask = torch.tensor([True, False, True, True, False])
    masked = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, class_mask=mask)
    with torch.no_grad():
        lf, lm = full(images), masked(images)
    assert lm.shape == (6, 3)
    assert masked.num_classes == 3 and full.num_classes == 5
    torch.testing.assert_close(lm, lf[:, [0, 2, 3]])
    with pytest.raises(ValueError, match="class_mask"):
        build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, class_mask=torch.ones(4, dtype=bool))


def test_load_pair_with_a_class_mask(tiny_cfg, tiny_classes, tiny_templates, tiny_pair, images) -> None:
    full, _ = tiny_pair
    zs, ft = adawise.load_pair(tiny_cfg, tiny_classes, templates=tiny_templates,
                               class_mask=[False, True, True, False, True])  # a plain list is accepted
    assert zs.provenance["class_mask"] == 3
    with torch.no_grad():
        assert ft(images).shape == (6, 3)
        torch.testing.assert_close(zs(images), full(images)[:, [1, 2, 4]])


def test_input_checks_give_clear_errors(tiny_pair, images) -> None:
    zs, _ = tiny_pair
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        zs(images[0])  # a single image without the batch dimension
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        zs(images.numpy())
    with pytest.raises(ValueError, match="channels"):
        zs(images[:, :2])
    with pytest.raises(ValueError, match="uint8|255"):
        zs((images * 255).to(torch.uint8))
    with torch.no_grad():
        grey = images[:, :1]
        torch.testing.assert_close(zs(grey), zs(grey.expand(-1, 3, -1, -1)))  # one channel is replicated
        assert zs(torch.rand(2, 3, 48, 40)).shape == (2, 5)  # other sizes are resized


def test_load_pair_with_config_and_random_weights(tiny_pair, tiny_cfg, tiny_classes, tiny_templates,
                                                  images) -> None:
    zs, ft = tiny_pair
    assert isinstance(zs, CLIPClassifier) and isinstance(ft, CLIPClassifier)
    sz, sf = zs.state_dict(), ft.state_dict()
    assert list(sz) == list(sf)
    assert all(sz[k].shape == sf[k].shape for k in sz)
    assert not torch.equal(sz["head.weight"], sf["head.weight"])  # a perturbed copy, not the same model
    assert not zs.training and not ft.training
    assert zs.provenance["pretrained"] == "random init"
    assert "finetuned" in ft.provenance
    # the same seed gives the same pair
    zs2, ft2 = adawise.load_pair(tiny_cfg, tiny_classes, templates=tiny_templates)
    with torch.no_grad():
        torch.testing.assert_close(zs2(images), zs(images))
        torch.testing.assert_close(ft2(images), ft(images))


def test_missing_pretrained_file_names_the_path(tmp_path, tiny_cfg) -> None:
    missing = tmp_path / "nowhere" / "clip-weights.safetensors"
    with pytest.raises(FileNotFoundError, match="clip-weights.safetensors") as err:
        adawise.load_pair(tiny_cfg, ["a", "b"], pretrained=missing, templates="simple")
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError, match="openai"):
        create_clip("ViT-B-16", pretrained="openai")  # a hub tag is not a local file: refused, no download


def test_pretrained_local_file_is_loaded(tmp_path, tiny_cfg, make_tiny_clip, images) -> None:
    source = make_tiny_clip(seed=5)
    path = tmp_path / "clip.safetensors"
    adawise.save_state_dict(source.state_dict(), path)
    model, _ = create_clip(tiny_cfg, pretrained=path)
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_finetuned_round_trip(tmp_path, tiny_cfg, tiny_classes, tiny_templates, tiny_pair, images) -> None:
    zs, ft = tiny_pair
    path = tmp_path / "ft" / "finetuned.safetensors"
    adawise.save_state_dict(ft.state_dict(), path)
    zs2, ft2 = adawise.load_pair(tiny_cfg, tiny_classes, finetuned=path, templates=tiny_templates)
    for k, v in ft.state_dict().items():
        assert torch.equal(ft2.state_dict()[k], v), k
    assert ft2.provenance["finetuned"] == str(path)
    with torch.no_grad():
        torch.testing.assert_close(ft2(images), ft(images))
        torch.testing.assert_close(zs2(images), zs(images))


def test_wise_ft_style_checkpoint_is_imported(tmp_path, tiny_cfg, tiny_classes, tiny_templates, tiny_pair,
                                              make_tiny_clip) -> None:
    _, ft = tiny_pair
    clip = make_tiny_clip(seed=0)
    foreign = {f"image_encoder.model.{k}": v for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    foreign.update({f"image_encoder.model.{k}": v for k, v in ft.state_dict().items() if k.startswith("visual.")})
    foreign["classification_head.weight"] = ft.head.weight.detach()
    foreign["classification_head.bias"] = ft.head.bias.detach()
    path = tmp_path / "wiseft_checkpoint.pt"
    torch.save({"state_dict": foreign, "epoch": 10}, path)
    _, ft2 = adawise.load_pair(tiny_cfg, tiny_classes, finetuned=path, templates=tiny_templates)
    assert list(ft2.state_dict()) == list(ft.state_dict())
    for k, v in ft.state_dict().items():
        assert torch.equal(ft2.state_dict()[k], v), k
    # DataParallel prefix as well
    path2 = tmp_path / "dp.safetensors"
    adawise.save_state_dict({f"module.{k}": v for k, v in foreign.items()}, path2)
    _, ft3 = adawise.load_pair(tiny_cfg, tiny_classes, finetuned=path2, templates=tiny_templates)
    assert torch.equal(ft3.head.weight, ft.head.weight)


def test_finetuned_for_another_architecture_lists_keys(tmp_path, tiny_cfg, tiny_classes, tiny_templates) -> None:
    other_cfg = copy.deepcopy(tiny_cfg)
    other_cfg["vision_cfg"]["layers"] = 3
    _, other = adawise.load_pair(other_cfg, tiny_classes[:4], templates=tiny_templates)
    sd = other.state_dict()
    del sd["visual.ln_post.weight"]
    path = tmp_path / "other.safetensors"
    adawise.save_state_dict(sd, path)
    with pytest.raises(StateDictMismatchError) as err:
        adawise.load_pair(tiny_cfg, tiny_classes, finetuned=path, templates=tiny_templates)
    msg = str(err.value)
    assert "visual.ln_post.weight" in msg  # missing from the checkpoint
    assert "visual.transformer.resblocks.2." in msg  # unexpected in the checkpoint
    assert "head.weight (5, 32) vs (4, 32)" in msg  # mis-shaped
    assert str(path) in msg


def test_head_cache_is_written_and_reused(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates,
                                          monkeypatch, images) -> None:
    cache = tmp_path / "heads"
    first = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, head_cache_dir=cache)
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    stored = adawise.load_checkpoint(files[0])["weight"]
    torch.testing.assert_close(stored, first.head.weight)

    # reuse: the text tower is not run again, and the cached values are what the head gets
    adawise.save_state_dict({"weight": 2 * stored}, files[0])

    def boom(*args, **kwargs):
        raise AssertionError("zero-shot head recomputed despite the cache")

    monkeypatch.setattr(clipmod, "zeroshot_head", boom)
    second = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, head_cache_dir=cache)
    torch.testing.assert_close(second.head.weight, 2 * stored)

    # other classes (or other weights) make another cache entry
    monkeypatch.undo()
    build_classifier(tiny_clip, tiny_tokenizer, tiny_classes[:3], tiny_templates, head_cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_resolve_templates(tmp_path) -> None:
    assert resolve_templates("simple") == ["a photo of a {}."]
    assert len(resolve_templates("openai")) == 80
    good = tmp_path / "t.txt"
    good.write_text("a {}.\n\nart of the {}.\n")
    assert resolve_templates(str(good)) == ["a {}.", "art of the {}."]
    bad = tmp_path / "bad.txt"
    bad.write_text("a {}.\nno placeholder\n")
    with pytest.raises(ValueError, match="no placeholder"):
        resolve_templates(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        resolve_templates(str(tmp_path / "missing.txt"))


# ----------------------------------------------------------------------------- a damaged or foreign head cache


def _cached(tmp_path, tiny_clip, tiny_tokenizer, classes, templates):
    cache = tmp_path / "heads"
    clf = build_classifier(tiny_clip, tiny_tokenizer, classes, templates, head_cache_dir=cache)
    (path,) = cache.glob("zeroshot-head-*.safetensors")
    return cache, path, clf.head.weight.detach().clone()


def test_a_truncated_head_cache_is_rebuilt_with_a_warning(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes,
                                                          tiny_templates) -> None:
    cache, path, head = _cached(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    path.write_bytes(path.read_bytes()[:40])  # a run killed while writing it (before the atomic write)
    with pytest.warns(UserWarning, match="head cache .* unusable"):
        again = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, head_cache_dir=cache)
    torch.testing.assert_close(again.head.weight, head)
    assert torch.equal(adawise.load_checkpoint(path)["weight"], head)  # rewritten, whole


def test_a_head_cache_with_other_rows_is_not_used(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes,
                                                  tiny_templates) -> None:
    cache, path, head = _cached(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    adawise.save_state_dict({"weight": head[:3]}, path)  # a 3-row head under the 5-class key
    with pytest.warns(UserWarning, match=r"\[3, 32\] head for 5 class names"):
        again = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, head_cache_dir=cache)
    assert again.head.weight.shape == (5, 32)
    torch.testing.assert_close(again.head.weight, head)


def test_head_cache_writes_are_atomic_and_readable_by_others(tmp_path, monkeypatch, tiny_clip, tiny_tokenizer,
                                                              tiny_classes, tiny_templates) -> None:
    cache = tmp_path / "heads"

    def dies_midway(tensors, path, metadata=None):
        open(path, "wb").write(b"\x00" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(clipmod, "save_state_dict", dies_midway)
    with pytest.warns(UserWarning, match="cannot write the zero-shot head cache"):
        build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, head_cache_dir=cache)
    assert list(cache.iterdir()) == []  # no partial file under the final name, no temporary left
    monkeypatch.undo()
    _, path, _ = _cached(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not private to this user


def test_a_head_cache_path_that_is_a_folder_is_skipped(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes,
                                                       tiny_templates) -> None:
    cache, path, head = _cached(tmp_path, tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates)
    path.unlink()
    path.mkdir()
    with pytest.warns(UserWarning, match="not a regular file"):
        again = build_classifier(tiny_clip, tiny_tokenizer, tiny_classes, tiny_templates, head_cache_dir=cache)
    torch.testing.assert_close(again.head.weight, head)


def test_pretrained_weights_of_another_width_give_one_clear_error(tmp_path, tiny_cfg, make_tiny_clip) -> None:
    path = tmp_path / "tiny.safetensors"
    adawise.save_state_dict(make_tiny_clip().state_dict(), path)
    wider = copy.deepcopy(tiny_cfg)
    wider["vision_cfg"]["width"] = 96
    with pytest.raises(StateDictMismatchError, match=r"does not fit the architecture the custom config: .*shape "
                                                     r"mismatches \(\d+\): .*\(96,\) vs \(64,\)"):
        create_clip(wider, pretrained=path)
    with pytest.raises(StateDictMismatchError, match="does not fit the architecture ViT-B-16: .*keys only in"):
        create_clip("ViT-B-16", pretrained=path)  # open_clip's own loader would fail with an AssertionError
    bad = copy.deepcopy(tiny_cfg)
    bad["vision_cfg"]["widht"] = 64
    with pytest.raises(adawise.UsageError, match="custom open_clip config cannot build a CLIP"):
        create_clip(bad)
