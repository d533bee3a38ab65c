"""VRF (Zhu et al., NeurIPS 2024): ZSF set, k-th neighbour distances, ω, temperatures, the method, the CLI."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adawise
from adawise.methods.static import mix_probabilities
from adawise.methods.zsf import ZSFIndex, build_zsf_index, fit_temperature, kth_distance, reference_k, vrf_weight
from streams.base import from_tensors
from streams.folders import FolderStream

D = C = 6


class Toy(nn.Module):
    """Images [B, 2D]: this model reads columns [offset, offset + D), normalises them, head = W."""

    def __init__(self, offset: int, head: torch.Tensor | None = None) -> None:
        super().__init__()
        self.offset = offset
        self.head = nn.Linear(D, C, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(C) if head is None else head)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images[:, self.offset : self.offset + D], dim=-1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encode(images))


def toy_pair() -> tuple[Toy, Toy]:
    """(zero-shot reads the second half, fine-tuned reads the first half); heads scaled like CLIP."""
    return Toy(D, 12 * torch.eye(C)), Toy(0, 10 * torch.eye(C))


def brute(queries: np.ndarray, bank: np.ndarray, k: int, squared: bool) -> np.ndarray:
    d2 = ((queries[:, None, :].astype(np.float64) - bank[None, :, :]) ** 2).sum(-1)
    kth = np.sort(d2, axis=1)[:, k - 1]
    return kth if squared else np.sqrt(kth)


# ----------------------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("k", [1, 4, 17])
@pytest.mark.parametrize("chunk", [13, 100, 65536])  # 13 < k=17: chunks smaller than k
@pytest.mark.parametrize("normalise", [True, False])
def test_kth_distance_matches_brute_force(squared: bool, k: int, chunk: int, normalise: bool) -> None:
    rng = np.random.default_rng(k * 100 + chunk)
    bank = rng.standard_normal((257, 24)).astype(np.float32)  # 257 = not a multiple of any chunk
    queries = rng.standard_normal((300, 24)).astype(np.float32)  # > one query block
    if normalise:
        bank /= np.linalg.norm(bank, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    idx = ZSFIndex(torch.from_numpy(bank), k=k, squared=squared, chunk_size=chunk, backend="torch")
    got = idx.kth_distance(torch.from_numpy(queries)).numpy()
    np.testing.assert_allclose(got, brute(queries, bank, k, squared), atol=1e-4, rtol=1e-5)


def test_kth_distance_exact_for_duplicates() -> None:
    bank = F.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(kth_distance(bank[:10], bank, k=1, squared=False), torch.zeros(10))
    assert torch.equal(kth_distance(bank[:10], bank, k=1, squared=True), torch.zeros(10))


def test_kth_distance_bad_inputs() -> None:
    idx = ZSFIndex(torch.randn(20, 64), k=3)
    with pytest.raises(ValueError, match="dim 32.*dim-64"):
        idx.kth_distance(torch.randn(4, 32))
    with pytest.raises(ValueError, match="k=21"):
        ZSFIndex(torch.randn(20, 64), k=21)
    with pytest.raises(ValueError, match="pass k"):
        ZSFIndex(torch.randn(20, 64))
    assert idx.kth_distance(torch.randn(0, 64)).shape == (0,)


def test_faiss_backend_requires_faiss() -> None:
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="faiss"):
            ZSFIndex(torch.randn(5, 4), k=1, backend="faiss")
    else:  # pragma: no cover - only where faiss is installed
        bank, q = torch.randn(300, 16), torch.randn(20, 16)
        ref = ZSFIndex(bank, k=5, backend="torch").kth_distance(q)
        assert torch.allclose(ZSFIndex(bank, k=5, backend="faiss").kth_distance(q), ref, atol=1e-4)


# ----------------------------------------------------------------------------------------- ω and T


def test_omega_monotone_and_half_at_a() -> None:
    d = torch.linspace(0, 4, 401)
    w = vrf_weight(d, a=1.5, b=0.6)
    assert torch.all(w[1:] < w[:-1])
    assert vrf_weight(torch.tensor([1.5]), 1.5, 0.6).item() == pytest.approx(0.5, abs=1e-7)
    assert vrf_weight(torch.tensor([0.7]), 0.7, 0.01).item() == pytest.approx(0.5, abs=1e-7)
    with pytest.raises(ValueError):
        vrf_weight(d, 1.5, 0.0)


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_fitted_temperature_matches_accuracy(scale: float) -> None:
    g = torch.Generator().manual_seed(int(scale * 10))
    labels = torch.randint(0, 10, (2000,), generator=g)
    logits = scale * torch.randn(2000, 10, generator=g)
    logits[torch.arange(2000), labels] += scale * 1.2  # accuracy well above chance
    t = fit_temperature(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean().item()
    conf = torch.softmax(logits.double() / t, 1).max(1).values.mean().item()
    assert abs(conf - acc) < 1e-3


def test_reference_k_rule() -> None:
    assert reference_k(150, 1000) == 150
    assert reference_k(1, 10**6) == 1
    assert reference_k(2, 10**6) == 1  # at least 1
    assert reference_k(1_281, 1_281_167) == 1


# ----------------------------------------------------------------------------------------- ZSF set


def constructed_data(
    n: int = 120, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose fine-tuned / zero-shot predictions are chosen per sample."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    ft_ok = torch.rand(n, generator=g) < 0.7
    zs_ok = torch.rand(n, generator=g) < 0.4
    ft_pred = torch.where(ft_ok, labels, (labels + 1) % C)
    zs_pred = torch.where(zs_ok, labels, (labels + 2) % C)
    images = 0.1 * torch.rand(n, 2 * D, generator=g)
    images[torch.arange(n), ft_pred] += 1.0
    images[torch.arange(n), D + zs_pred] += 1.0
    return images, labels, ft_ok, zs_ok


def test_zsf_selection_on_constructed_predictions() -> None:
    zs, ft = toy_pair()
    images, labels, ft_ok, zs_ok = constructed_data()
    hold_images, hold_labels, _, _ = constructed_data(60, seed=1)
    idx = build_zsf_index(
        zs,
        ft,
        from_tensors(images, labels, batch_size=16),
        holdout=from_tensors(hold_images, hold_labels, batch_size=16),
        k=2,
        progress=False,
    )
    want = ft_ok & ~zs_ok
    assert torch.allclose(idx.features, F.normalize(images[want, :D], dim=-1))
    m = idx.metadata
    assert (m["n_source"], m["n_zsf"]) == (120, int(want.sum()))
    assert (m["ft_correct"], m["zs_correct"]) == (int(ft_ok.sum()), int(zs_ok.sum()))
    assert m["n_holdout"] == 60 and idx.k == 2
    assert m["zeroshot_hash"] and m["finetuned_hash"] and m["zeroshot_hash"] != m["finetuned_hash"]
    for t, model in ((idx.T_zs, zs), (idx.T_ft, ft)):
        z = model(hold_images)
        conf = torch.softmax(z.double() / t, 1).max(1).values.mean().item()
        assert abs(conf - (z.argmax(1) == hold_labels).double().mean().item()) < 1e-3


def test_zsf_holdout_split_and_k_rule() -> None:
    zs, ft = toy_pair()
    images, labels, _, _ = constructed_data(400, seed=3)
    stream = from_tensors(images, labels, batch_size=64)
    idx = build_zsf_index(zs, ft, stream, holdout_fraction=0.25, progress=False)
    m = idx.metadata
    assert m["n_source"] + m["n_holdout"] == 400 and 50 < m["n_holdout"] < 150
    assert idx.k == min(m["n_zsf"], reference_k(m["n_zsf"], m["n_source"]))
    again = build_zsf_index(zs, ft, stream, holdout_fraction=0.25, progress=False)
    assert torch.equal(again.features, idx.features)  # seeded split
    assert (again.T_zs, again.T_ft) == (idx.T_zs, idx.T_ft)


def test_empty_zsf_set_and_models_without_encode() -> None:
    zs, ft = toy_pair()
    images, labels, _, _ = constructed_data()
    with pytest.raises(ValueError, match="empty Zero-Shot-Failure set"):
        build_zsf_index(ft, ft, from_tensors(images, labels), progress=False)
    plain = nn.Sequential(nn.Linear(2 * D, C))
    with pytest.raises(TypeError, match="encode"):
        build_zsf_index(plain, ft, from_tensors(images, labels), progress=False)
    with pytest.raises(TypeError, match="encode"):
        adawise.make_method("vrf", zeroshot=zs, finetuned=plain, index=ZSFIndex(torch.randn(5, D), k=1))


# ----------------------------------------------------------------------------------------- IO


def test_save_load_round_trip(tmp_path) -> None:
    zs, ft = toy_pair()
    images, labels, _, _ = constructed_data()
    idx = build_zsf_index(
        zs, ft, from_tensors(images, labels), k=3, a=1.2, b=0.5, squared=False, progress=False
    )
    path = tmp_path / "sub" / "zsf.safetensors"
    idx.save(path)
    back = ZSFIndex.load(path)
    assert torch.equal(back.features, idx.features)
    assert (back.k, back.a, back.b, back.squared, back.T_zs, back.T_ft) == (
        3,
        1.2,
        0.5,
        False,
        idx.T_zs,
        idx.T_ft,
    )
    assert back.metadata == idx.metadata and back.path == str(path)
    q = F.normalize(torch.randn(9, D), dim=-1)
    assert torch.equal(back.kth_distance(q), idx.kth_distance(q))


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="vrf-index"):
        ZSFIndex.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a ZSF index"):
        ZSFIndex.load(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        ZSFIndex.load(junk)


# ----------------------------------------------------------------------------------------- the method


def test_vrf_registered_and_exported() -> None:
    assert "vrf" in adawise.registered_methods()
    assert adawise.ZSFIndex is ZSFIndex and adawise.build_zsf_index is build_zsf_index


def test_vrf_endpoints_and_mixture(tmp_path) -> None:
    zs, ft = toy_pair()
    images, labels, _, _ = constructed_data()
    idx = build_zsf_index(zs, ft, from_tensors(images, labels), k=2, progress=False)
    x = constructed_data(32, seed=5)[0]
    p_ft = torch.softmax(ft(x) / 0.7, 1)
    p_zs = torch.softmax(zs(x) / 1.3, 1)
    for a, want in ((1e6, p_ft), (-1e6, p_zs)):  # ω ≡ 1 and ω ≡ 0
        m = adawise.make_method("vrf", zeroshot=zs, finetuned=ft, index=idx, a=a, T_zs=1.3, T_ft=0.7)
        out = m(x)
        assert torch.allclose(out.exp(), want, atol=1e-6)
        assert m.info["omega_mean"] == pytest.approx(1.0 if a > 0 else 0.0)
    idx.save(tmp_path / "zsf.safetensors")
    m = adawise.make_method("vrf", zeroshot=zs, finetuned=ft, index=str(tmp_path / "zsf.safetensors"))
    out = m(x)
    omega = vrf_weight(idx.kth_distance(ft.encode(x)), idx.a, idx.b)
    assert torch.allclose(out, mix_probabilities(zs(x) / idx.T_zs, ft(x) / idx.T_ft, omega), atol=1e-6)
    info = m.info
    assert info["forward_passes"] == 2 and info["omega_mean"] == pytest.approx(omega.mean().item(), abs=1e-6)
    assert info["knn_seconds"] >= 0 and math.isfinite(info["distance_mean"])
    assert m.alpha is None and m.options()["k"] == 2 and m.options()["index"].endswith("zsf.safetensors")


def test_vrf_refuses_index_of_other_models() -> None:
    zs, ft = toy_pair()
    images, labels, _, _ = constructed_data()
    idx = build_zsf_index(zs, ft, from_tensors(images, labels), k=2, progress=False)
    other = Toy(0, 9 * torch.eye(C))
    with pytest.raises(ValueError, match="built for zero-shot weights .*fine-tuned differ"):
        adawise.make_method("vrf", zeroshot=zs, finetuned=other, index=idx)
    adawise.make_method("vrf", zeroshot=zs, finetuned=other, index=idx, check_hash=False)
    # an index from a raw feature matrix carries no hash: accepted, but a wrong dim fails at search time
    m = adawise.make_method("vrf", zeroshot=zs, finetuned=ft, index=ZSFIndex(torch.randn(10, D + 1), k=1))
    with pytest.raises(ValueError, match=f"dim {D}.*dim-{D + 1}"):
        m(images[:4])
    with pytest.raises(ValueError, match="index="):
        adawise.make_method("vrf", zeroshot=zs, finetuned=ft)


# ----------------------------------------------------------------------------------------- CLI


def _cli_args(*argv: str) -> argparse.Namespace:
    from adawise.apps import vrf_index as vrf_cli

    parser = argparse.ArgumentParser()
    vrf_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_embedded(tmp_path, monkeypatch, capsys) -> None:
    from adawise.apps import vrf_index as vrf_cli

    zs, ft = toy_pair()
    images, labels, _, _ = constructed_data()
    hold, hold_labels, _, _ = constructed_data(40, seed=2)
    world = argparse.Namespace(
        zeroshot=zs,
        finetuned=ft,
        source_images=images,
        source_labels=labels,
        holdout_images=hold,
        holdout_labels=hold_labels,
    )
    from adawise.embedded import world as embedded_world

    monkeypatch.setattr(embedded_world, "load_embedded", lambda **kw: world)  # what vrf-index --embedded loads
    out = tmp_path / "zsf.safetensors"
    assert (
        vrf_cli.main(
            _cli_args("--embedded", "--out", str(out), "--k", "2", "--no-progress", "--device", "cpu")
        )
        == 0
    )
    idx = ZSFIndex.load(out)
    assert idx.k == 2 and idx.metadata["n_holdout"] == 40 and "ZSF index" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys) -> None:
    from adawise.apps import vrf_index as vrf_cli
    from adawise.errors import MissingFileError, UsageError

    with pytest.raises(UsageError, match="missing: --pretrained --finetuned --source-data"):
        vrf_cli.main(_cli_args("--out", str(tmp_path / "x.safetensors"), "--arch", "ViT-B-16"))
    args = _cli_args(
        "--out",
        "x",
        "--arch",
        "ViT-B-16",
        "--pretrained",
        str(tmp_path / "nope.bin"),
        "--finetuned",
        str(tmp_path / "ft.safetensors"),
        "--source-data",
        str(tmp_path),
    )
    with pytest.raises(MissingFileError, match="nope.bin"):
        vrf_cli.main(args)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        FolderStream(tmp_path / "none", 32)
    (tmp_path / "data" / "notawnid").mkdir(parents=True)
    with pytest.raises(ValueError, match="not known class ids"):
        FolderStream(tmp_path / "data", 32, label_of={"n01440764": 0})


def test_vrf_in_the_loop_logs_mean_omega(tmp_path) -> None:
    import json

    zs, ft = toy_pair()
    images, labels, _, _ = constructed_data()
    idx = build_zsf_index(zs, ft, from_tensors(images, labels), k=2, progress=False)
    method = adawise.make_method("vrf", zeroshot=zs, finetuned=ft, index=idx)
    x, y, _, _ = constructed_data(40, seed=7)
    log = tmp_path / "vrf.jsonl"
    result = adawise.run_stream(method, from_tensors(x, y, "clean", batch_size=16), log=log, progress=False)
    batches = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("type") == "batch"]
    assert len(batches) == 3 and all(0.0 <= r["omega_mean"] <= 1.0 and r["forward_passes"] == 2 for r in batches)
    assert result.alphas == [None, None, None]
