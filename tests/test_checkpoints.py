"""Safe checkpoint IO: safetensors, weights-only torch files, pickles only when trusted; weights_hash."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

import adawise
from adawise.models.checkpoints import (
    UntrustedPickleError,
    import_state_dict,
    load_checkpoint,
    save_state_dict,
    weights_hash,
)


def sample_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "visual.w": torch.randn(4, 3, generator=gen),
        "visual.half": torch.randn(5, generator=gen).to(torch.bfloat16),
        "head.weight": torch.randn(2, 4, generator=gen),
        "count": torch.tensor(3),
        "mask": torch.tensor([True, False]),
    }


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


class Evil:
    """Unpickling this runs ``open(marker, "w")``: the canonical code-execution payload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_safetensors_round_trip(tmp_path) -> None:
    sd = sample_state()
    path = tmp_path / "sub" / "w.safetensors"
    save_state_dict(sd, path, metadata={"note": "test"})
    assert_same(load_checkpoint(path), sd)
    # shared storage (tied weights) is saved as independent tensors
    shared = torch.randn(3, 3)
    save_state_dict({"a": shared, "b": shared, "t": shared.T}, tmp_path / "tied.safetensors")
    loaded = load_checkpoint(tmp_path / "tied.safetensors")
    assert torch.equal(loaded["a"], shared) and torch.equal(loaded["t"], shared.T)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model_state_dict", "module"])
def test_weights_only_torch_files(tmp_path, wrap) -> None:
    sd = sample_state()
    path = tmp_path / "w.pt"
    if wrap is None:
        torch.save(sd, path)
    elif wrap == "module":
        model = nn.Linear(3, 2)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"model": sd, "epoch": 3, "args": {"lr": 0.1}}, path)
    else:
        torch.save({wrap: sd, "epoch": 3}, path)
    assert_same(load_checkpoint(path), sd)


def test_malicious_pickle_refused_without_trust(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UntrustedPickleError) as err:
        load_checkpoint(path)
    assert not marker.exists(), "the pickle's code ran without trust_pickle"
    msg = str(err.value)
    assert str(path) in msg and "trust_pickle=True" in msg
    # the same through the model loader
    with pytest.raises(UntrustedPickleError):
        adawise.load_checkpoint(path, trust_pickle=False)
    assert not marker.exists()

    loaded = load_checkpoint(path, trust_pickle=True)  # trusted: unpickled (the payload runs)
    assert marker.exists()
    assert set(loaded) == {"weight"} and torch.equal(loaded["weight"], torch.ones(2))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_file_refused_without_trust(tmp_path) -> None:
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": Evil(str(marker))}, f)
    with pytest.raises(UntrustedPickleError):
        load_checkpoint(path)
    assert not marker.exists()


def test_pickled_module_needs_trust(tmp_path) -> None:
    """wise-ft saves whole modules; they load only with trust_pickle, as their state dict."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    path = tmp_path / "module.pt"
    torch.save(model, path)
    with pytest.raises(UntrustedPickleError):
        load_checkpoint(path)
    assert_same(load_checkpoint(path, trust_pickle=True), model.state_dict())


def test_missing_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "no" / "such.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="such.pt"):
        load_checkpoint(tmp_path / "such.pt")


def test_no_state_dict_inside(tmp_path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(path)


def test_weights_hash_stable_and_sensitive() -> None:
    sd = sample_state()
    h = weights_hash(sd)
    assert isinstance(h, str) and len(h) == 16
    assert weights_hash({k: v.clone() for k, v in reversed(list(sd.items()))}) == h  # order-independent
    assert weights_hash(sd) == h

    changed = {k: v.clone() for k, v in sd.items()}
    changed["visual.w"][2, 1] += 1e-3
    assert weights_hash(changed) != h
    flipped = {k: v.clone() for k, v in sd.items()}
    flipped["mask"][1] = True
    assert weights_hash(flipped) != h
    renamed = dict(sd)
    renamed["visual.w2"] = renamed.pop("visual.w")
    assert weights_hash(renamed) != h
    recast = dict(sd)
    recast["head.weight"] = sd["head.weight"].double()
    assert weights_hash(recast) != h

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    assert weights_hash(model) == weights_hash(model.state_dict())
    with torch.no_grad():
        model.bias[0] += 1.0
    assert weights_hash(model) != weights_hash({"weight": model.weight, "bias": model.bias - torch.tensor([1.0, 0])})


def test_import_state_dict_maps_foreign_layouts() -> None:
    v = torch.zeros(1)
    foreign = {
        "module.image_encoder.model.visual.conv1.weight": v,
        "image_encoder.model.visual.proj": v,
        "image_encoder.model.transformer.resblocks.0.attn.in_proj_weight": v,  # text tower: dropped
        "image_encoder.model.logit_scale": v,  # dropped
        "classification_head.weight": v,
        "model.visual.ln_post.bias": v,
        "visual.class_embedding": v,
        "text_projection": v,  # dropped
    }
    assert sorted(import_state_dict(foreign)) == sorted([
        "visual.conv1.weight", "visual.proj", "head.weight", "visual.ln_post.bias", "visual.class_embedding",
    ])
