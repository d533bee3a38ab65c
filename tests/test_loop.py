"""The online protocol (run_stream), its logs and resume, and the method registry with the static methods."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import adawise
from adawise.core.weights import interpolate
from adawise.evaluation.logs import read_jsonl, read_run
from adawise.methods.base import Method
from streams.base import ConcatStream, TensorStream

C = 4  # classes of the feature streams


def feature_stream(domains=("clean", "fog", "snow"), per_domain: int = 10, batch_size: int = 5,
                   seed: int = 0, repeat: bool = False) -> ConcatStream:
    """Feature 'images' [B, C] whose argmax is the label (argmin never is); one part per domain.

    With ``repeat`` every domain holds the same samples (so a method can meet a batch again).
    """
    gen = torch.Generator().manual_seed(seed)
    parts = []
    labels = x = None
    for domain in domains:
        if labels is None or not repeat:
            labels = torch.randint(0, C, (per_domain,), generator=gen)
            x = 5 * F.one_hot(labels, C).float() + torch.rand(per_domain, C, generator=gen)
        parts.append(TensorStream(x, labels, domain, batch_size))
    return ConcatStream(parts)


def key(x: torch.Tensor) -> bytes:
    return x.detach().cpu().numpy().tobytes()


class Cheater(Method):
    """Wrong on a batch it has not observed; after observe() it is right on that same batch.

    It learns only from its own logits (negating them), never from labels: so a loop that scored after
    observe(), or predicted again after the update, would report perfect accuracy.
    """

    name = "cheater"
    adapts = True

    def __init__(self) -> None:
        super().__init__()
        self.memory: dict[bytes, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.memory.get(key(x), -x)

    def observe(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        self.memory.setdefault(key(x), -logits)  # learn a batch once; later visits reuse it

    def reset(self) -> None:
        self.memory.clear()


class Spy(Method):
    """Identity predictions; records every call the loop makes."""

    name = "spy"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple] = []
        self._last: torch.Tensor | None = None

    def prepare(self, stream) -> None:
        self.events.append(("prepare",))

    def on_domain(self, domain: str) -> None:
        self.events.append(("on_domain", domain))

    def reset(self) -> None:
        self.events.append(("reset",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.events.append(("forward", key(x)))
        self._last = x.clone()
        return x.clone()

    def observe(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        assert torch.equal(logits, self._last), "observe() must get the logits that were scored"
        self.events.append(("observe", key(x)))


class Drift(Method):
    """A stateful adaptive method: observed predictions push a running bias that shifts later logits.

    Its forward also draws from torch's global RNG, so a resumed run matches only if the RNG stream is
    replayed too. ``alpha`` and ``info`` expose the state.
    """

    name = "drift"
    adapts = True

    def __init__(self, rate: float = 0.9) -> None:
        super().__init__()
        self.rate = rate
        self.register_buffer("bias", torch.zeros(C))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.bias + 0.3 * torch.randn(x.shape)

    def observe(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        self.bias += self.rate * torch.softmax(logits, -1).mean(0) * len(x)
        self.seen += len(x)

    def reset(self) -> None:
        self.bias.zero_()
        self.seen.zero_()

    @property
    def alpha(self) -> float:
        return float(torch.sigmoid(self.bias[0] - self.bias[1]))

    @property
    def info(self) -> dict:
        return {"forward_passes": 1.0, "seen": int(self.seen), "bias": self.bias.tolist()}

    def options(self) -> dict:
        return {"rate": self.rate}


def expected_events(stream, setting: str) -> list[tuple]:
    events: list[tuple] = [("prepare",)]
    domain = None
    for batch in stream:
        if batch.domain != domain:
            if setting == "reset_each_shift" and domain is not None:
                events.append(("reset",))
            events.append(("on_domain", batch.domain))
            domain = batch.domain
        events += [("forward", key(batch.images)), ("observe", key(batch.images))]
    return events


def strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# ----------------------------------------------------------------------------- protocol


def test_prediction_is_scored_before_the_update() -> None:
    stream = feature_stream(domains=("first", "again"), repeat=True)  # the second domain repeats the first
    method = Cheater()
    result = adawise.run_stream(method, stream, progress=False)
    acc = [r["accuracy"] for r in result.records]
    assert acc == [0.0, 0.0, 1.0, 1.0]  # unseen batches wrong; batches observed earlier in the stream right
    assert result.per_domain == {"first": 0.0, "again": 1.0}
    assert result.accuracy == 0.5
    # the method really does become right on a batch right after observing it: scoring after observe()
    # would have reported 1.0 for the first domain
    first = next(iter(stream))
    assert (method(first.images).argmax(-1) == first.labels).all()

    # reset_each_shift wipes the memory at the boundary: nothing is carried into the second domain
    result = adawise.run_stream(Cheater(), stream, setting="reset_each_shift", progress=False)
    assert result.per_domain == {"first": 0.0, "again": 0.0}


@pytest.mark.parametrize("setting", ["continual", "reset_each_shift"])
def test_call_order_per_batch(setting) -> None:
    stream = feature_stream(domains=("a", "b", "c"), per_domain=7, batch_size=3)  # 3 batches per domain
    spy = Spy()
    adawise.run_stream(spy, stream, setting=setting, progress=False)
    assert spy.events == expected_events(stream, setting)
    resets = sum(e[0] == "reset" for e in spy.events)
    assert resets == (2 if setting == "reset_each_shift" else 0)
    assert spy.events[1] == ("on_domain", "a")  # no reset before the first domain


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="continual"):
        adawise.run_stream(Spy(), feature_stream(), setting="episodic", progress=False)


def test_partial_last_batch_and_batch_of_one(tiny_pair) -> None:
    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(0)
    imgs, labels = torch.rand(7, 3, 32, 32, generator=gen), torch.randint(0, 5, (7,), generator=gen)
    method = adawise.make_method("zeroshot", zs, ft)
    result = adawise.run_stream(method, TensorStream(imgs, labels, "d", 3), progress=False)
    assert [r["n"] for r in result.records] == [3, 3, 1]
    with torch.no_grad():
        preds = zs(imgs).argmax(-1)
    assert sum(r["correct"] for r in result.records) == int((preds == labels).sum())
    assert result.accuracy == pytest.approx(float((preds == labels).float().mean()))

    ones = adawise.run_stream(method, TensorStream(imgs[:3], labels[:3], "d", 1), progress=False)
    assert [r["n"] for r in ones.records] == [1, 1, 1]
    assert [r["correct"] for r in ones.records] == (preds[:3] == labels[:3]).int().tolist()
    assert all(r["accuracy"] in (0.0, 1.0) for r in ones.records)


def test_nan_logits_are_scored_and_entropy_is_null(tmp_path) -> None:
    class NaNOnSecond(Method):
        name = "nan"

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return torch.full_like(x, float("nan")) if self.calls == 2 else x

    log = tmp_path / "nan.jsonl"
    result = adawise.run_stream(NaNOnSecond(), feature_stream(domains=("d",)), log=log, progress=False)
    first, second = result.records
    assert first["entropy"] is not None and first["accuracy"] == 1.0
    assert second["entropy"] is None
    assert isinstance(second["correct"], int) and 0.0 <= second["accuracy"] <= 1.0
    text = log.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    lines = [json.loads(line, parse_constant=refuse) for line in text.splitlines()]
    assert lines[2]["type"] == "batch" and lines[2]["entropy"] is None


# ----------------------------------------------------------------------------- logs


def test_log_header_batches_summary_and_table(tmp_path, tiny_pair) -> None:
    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(1)
    stream = ConcatStream([
        TensorStream(torch.rand(5, 3, 32, 32, generator=gen), torch.randint(0, 5, (5,), generator=gen), dom, 3)
        for dom in ("clean", "fog")
    ])
    log = tmp_path / "runs" / "zs.jsonl"
    result = adawise.run_stream(adawise.make_method("zeroshot", zs, ft), stream, log=log, seed=7,
                                config={"note": "test"}, progress=False)
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    header, batches, summary = records[0], records[1:-1], records[-1]
    assert [r["type"] for r in records] == ["header"] + ["batch"] * 4 + ["summary"]

    assert header["method"] == "zeroshot" and header["setting"] == "continual" and header["seed"] == 7
    assert isinstance(header["config_hash"], str) and header["config_hash"]
    assert header["config"] == {"note": "test"}
    assert header["device"] == "cpu"
    assert "torch" in header["versions"] and "python" in header["versions"]
    assert header["models"]["zeroshot"]["pretrained"] == "random init"  # how the model was loaded
    assert header["stream"]["batches"] == 4 and header["stream"]["domains"] == ["clean", "fog"]

    fields = {"method", "domain", "batch", "n", "correct", "accuracy", "entropy", "alpha", "forward_passes", "seconds"}
    for i, rec in enumerate(batches):
        assert fields <= set(rec)
        assert rec["method"] == "zeroshot" and rec["batch"] == i
        assert rec["alpha"] == 0.0 and rec["forward_passes"] == 1.0
        assert 0.0 <= rec["accuracy"] <= 1.0 and rec["accuracy"] == rec["correct"] / rec["n"]
        assert rec["entropy"] > 0 and rec["seconds"] >= 0
    assert [r["domain"] for r in batches] == ["clean", "clean", "fog", "fog"]
    assert [r["n"] for r in batches] == [3, 2, 3, 2]
    assert strip_timing(batches) == strip_timing(result.records)

    assert summary["method"] == "zeroshot"
    for dom in ("clean", "fog"):
        recs = [r for r in batches if r["domain"] == dom]
        assert summary["per_domain"][dom] == pytest.approx(sum(r["correct"] for r in recs) / 5)
        assert 0.0 <= summary["per_domain"][dom] <= 1.0
    assert summary["per_domain"] == pytest.approx(result.per_domain)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in batches) / 10) == result.accuracy
    assert summary["n"] == 10 and summary["batches"] == 4
    assert result.alphas == [0.0] * 4

    table = log.with_suffix(".txt").read_text()
    assert "zeroshot" in table and "clean" in table and "fog" in table
    assert f"{100 * result.per_domain['fog']:.1f}" in table


def test_alpha_null_without_alpha_and_info_fields(tmp_path, tiny_pair) -> None:
    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(2)
    stream = TensorStream(torch.rand(4, 3, 32, 32, generator=gen), torch.randint(0, 5, (4,), generator=gen), "d", 2)
    ose = adawise.run_stream(adawise.make_method("ose", zs, ft, w=0.5), stream, log=tmp_path / "ose.jsonl",
                             progress=False)
    assert all(r["alpha"] is None and r["forward_passes"] == 2.0 for r in ose.records)
    wise = adawise.run_stream(adawise.make_method("wiseft", zs, ft, alpha=0.3), stream, progress=False)
    assert wise.alphas == [0.3, 0.3]

    class Informative(Spy):
        name = "informative"

        @property
        def info(self):
            return {"forward_passes": 3.0, "evaluated": [0.1, 0.5], "accuracy": 123.0, "domain": "fake"}

    result = adawise.run_stream(Informative(), feature_stream(domains=("x",)), log=tmp_path / "i.jsonl",
                                progress=False)
    for rec in read_run(tmp_path / "i.jsonl")["batches"]:
        assert rec["evaluated"] == [0.1, 0.5] and rec["forward_passes"] == 3.0
        assert rec["accuracy"] == 1.0 and rec["domain"] == "x"  # info cannot overwrite the scored fields
    assert result.alphas == [None, None]


# ----------------------------------------------------------------------------- resume


def truncate_log(path, keep_batches: int, partial: bool = True) -> None:
    """Keep the header and the first ``keep_batches`` batch lines, plus half of the next line."""
    lines = path.read_text().splitlines(keepends=True)
    kept = "".join(lines[: 1 + keep_batches])
    if partial:
        nxt = lines[1 + keep_batches]
        kept += nxt[: len(nxt) // 2]
    path.write_text(kept)


@pytest.mark.parametrize("setting,keep", [("continual", 3), ("reset_each_shift", 4), ("continual", 0)])
def test_resume_equals_uninterrupted_run(tmp_path, setting, keep) -> None:
    stream = feature_stream(domains=("a", "b", "c"), per_domain=8, batch_size=4)  # 2 batches per domain
    full_log, cut_log = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    full_method = Drift()
    full = adawise.run_stream(full_method, stream, log=full_log, setting=setting, seed=3, progress=False)
    assert len({r["alpha"] for r in full.records}) > 3  # the state really changes from batch to batch

    adawise.run_stream(Drift(), stream, log=cut_log, setting=setting, seed=3, progress=False)
    truncate_log(cut_log, keep)
    assert read_run(cut_log)["summary"] is None

    method = Drift()
    resumed = adawise.run_stream(method, stream, log=cut_log, setting=setting, seed=3, resume=True, progress=False)
    assert strip_timing(resumed.records) == strip_timing(full.records)
    assert resumed.accuracy == full.accuracy and resumed.per_domain == full.per_domain
    assert torch.equal(method.bias, full_method.bias) and int(method.seen) == int(full_method.seen)

    records = read_jsonl(cut_log)  # every line parses; one header, the batches once, one summary
    types = [r["type"] for r in records]
    assert types == ["header"] + ["batch"] * len(stream) + ["summary"]
    assert strip_timing([r for r in records if r["type"] == "batch"]) == strip_timing(
        [r for r in read_jsonl(full_log) if r["type"] == "batch"])


def test_resume_after_a_line_lost_only_its_newline(tmp_path) -> None:
    stream = feature_stream()
    full = adawise.run_stream(Drift(), stream, log=tmp_path / "full.jsonl", progress=False)
    log = tmp_path / "cut.jsonl"
    adawise.run_stream(Drift(), stream, log=log, progress=False)
    truncate_log(log, 2, partial=False)
    log.write_text(log.read_text()[:-1])  # the last batch line is complete but unterminated
    resumed = adawise.run_stream(Drift(), stream, log=log, resume=True, progress=False)
    batches = read_run(log)["batches"]
    assert [r["batch"] for r in batches] == list(range(len(stream)))
    assert strip_timing(batches) == strip_timing(full.records) == strip_timing(resumed.records)


def test_resume_of_a_complete_log_does_not_rerun(tmp_path) -> None:
    stream = feature_stream()
    log = tmp_path / "done.jsonl"
    full = adawise.run_stream(Drift(), stream, log=log, progress=False)
    before = log.read_text()
    spy = Drift()
    again = adawise.run_stream(spy, stream, log=log, resume=True, progress=False)
    assert int(spy.seen) == 0  # nothing was run
    assert again.accuracy == full.accuracy and strip_timing(again.records) == strip_timing(full.records)
    assert log.read_text() == before


def test_resume_with_another_config_raises(tmp_path) -> None:
    stream = feature_stream()
    log = tmp_path / "cfg.jsonl"
    adawise.run_stream(Drift(), stream, log=log, config={"lr": 1}, progress=False)
    truncate_log(log, 2)
    for kwargs in ({"config": {"lr": 2}}, {"config": {"lr": 1}, "seed": 5},
                   {"config": {"lr": 1}, "setting": "reset_each_shift"}):
        with pytest.raises(ValueError, match="config"):
            adawise.run_stream(Drift(), stream, log=log, resume=True, progress=False, **kwargs)
    with pytest.raises(ValueError, match="config"):
        adawise.run_stream(Drift(rate=0.5), stream, log=log, config={"lr": 1}, resume=True, progress=False)


def test_without_resume_an_old_log_is_replaced(tmp_path) -> None:
    log = tmp_path / "x.jsonl"
    adawise.run_stream(Drift(), feature_stream(), log=log, progress=False)
    adawise.run_stream(Drift(), feature_stream(domains=("only",)), log=log, progress=False)
    run = read_run(log)
    assert len(run["batches"]) == 2 and {r["domain"] for r in run["batches"]} == {"only"}


# ----------------------------------------------------------------------------- registry and static methods


def test_registered_methods() -> None:
    names = adawise.registered_methods()
    assert {"zeroshot", "finetuned", "wiseft", "ose"} <= set(names)
    assert names == sorted(names)


def test_unknown_method_lists_names(tiny_pair) -> None:
    zs, ft = tiny_pair
    with pytest.raises(KeyError) as err:
        adawise.make_method("wise-ft", zs, ft)
    msg = str(err.value)
    assert "wise-ft" in msg and "wiseft" in msg and "zeroshot" in msg and "ose" in msg


def test_static_methods_match_their_definitions(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    sd0 = {k: v.clone() for k, v in zs.state_dict().items()}
    sd1 = {k: v.clone() for k, v in ft.state_dict().items()}
    with torch.no_grad():
        lz, lf = zs(images), ft(images)
        assert not torch.allclose(lz, lf)
        torch.testing.assert_close(adawise.make_method("zeroshot", zs, ft)(images), lz)
        torch.testing.assert_close(adawise.make_method("finetuned", zs, ft)(images), lf)

        wise = adawise.make_method("wiseft", zs, ft, alpha=0.3)
        assert wise.name == "wiseft" and wise.alpha == 0.3 and wise.options() == {"alpha": 0.3}
        reference = copy.deepcopy(zs)
        reference.load_state_dict(interpolate(sd0, sd1, 0.3))
        out = wise(images)
        torch.testing.assert_close(out, reference(images), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, lz, atol=1e-3) and not torch.allclose(out, lf, atol=1e-3)

        ose = adawise.make_method("ose", zs, ft, w=0.3)
        logp = ose(images)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(len(images)))
        mix = 0.3 * torch.softmax(lf, -1) + 0.7 * torch.softmax(lz, -1)
        torch.testing.assert_close(logp, mix.log(), rtol=1e-5, atol=1e-5)
    # the given models are never changed
    for k in sd0:
        assert torch.equal(zs.state_dict()[k], sd0[k]) and torch.equal(ft.state_dict()[k], sd1[k]), k
    with pytest.raises(ValueError, match="w must be in"):
        adawise.make_method("ose", zs, ft, w=1.5)


def test_static_methods_do_not_adapt() -> None:
    for name in ("zeroshot", "finetuned", "wiseft", "ose"):
        m = adawise.make_method(name, torch.nn.Identity(), torch.nn.Identity()) if name != "wiseft" else None
        if m is None:
            lin0, lin1 = torch.nn.Linear(C, C), torch.nn.Linear(C, C)
            m = adawise.make_method(name, lin0, lin1, alpha=0.5)
        assert m.adapts is False and m.uses_labels is False
        stream = feature_stream(domains=("a", "b"), repeat=True)
        res = adawise.run_stream(m, stream, progress=False)
        acc = [r["accuracy"] for r in res.records]
        assert acc[:2] == acc[2:] and all(0.0 <= a <= 1.0 for a in acc)
        assert not math.isnan(res.accuracy)


# ----------------------------------------------------------------------------- what the loop refuses or flags


class ListStream:
    """A hand-made stream of given batches (what a user's own stream yields)."""

    def __init__(self, batches) -> None:
        self.batches = batches
        self.skipped = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def describe(self) -> dict:
        return {"type": "ListStream", "batches": len(self.batches)}


def test_one_hot_and_float_labels_are_refused() -> None:
    from adawise.errors import DataError, InputTypeError
    from streams.base import Batch

    labels = torch.arange(C)
    x = 5 * F.one_hot(labels, C).float()
    one_hot = F.one_hot(labels, C)  # batch size == class count: min/max checks alone would pass it
    with pytest.raises(DataError, match=r"shape \[B\], got shape \(4, 4\) \(one-hot labels\? pass labels.argmax"):
        adawise.run_stream(Spy(), ListStream([Batch(x, one_hot, "d", 0)]), progress=False)
    with pytest.raises(InputTypeError, match="integer class indices, got dtype torch.float32"):
        adawise.run_stream(Spy(), ListStream([Batch(x, labels.float() + 0.9, "d", 0)]), progress=False)
    with pytest.raises(TypeError, match=r"values such as \[1.899"):
        TensorStream(x, torch.tensor([0.0, 1.9, 2.0, 3.0]), "d", 2)
    with pytest.raises(ValueError, match="one-hot"):
        TensorStream(x, one_hot, "d", 2)
    whole = TensorStream(x, labels.float(), "d", 2)  # whole numbers stored as floats are class indices
    assert whole.labels.dtype == torch.long and whole.labels.tolist() == [0, 1, 2, 3]


def test_rows_of_plus_inf_logits_are_undefined_not_class_0() -> None:
    class Infinite(Method):
        name = "inf"

        def forward(self, x):
            out = x.clone()
            out[0] = float("inf")  # every logit +inf: no class is predicted
            out[1, 2] = float("inf")  # one +inf: that class is the prediction
            return out

    labels = torch.tensor([0, 2, 1, 3])
    x = 5 * F.one_hot(labels, C).float()
    (record,) = adawise.run_stream(Infinite(), TensorStream(x, labels, "d", 4), progress=False).records
    assert record["nonfinite_rows"] == 1 and record["correct"] == 3


def test_images_in_0_255_are_flagged_not_refused(tiny_pair) -> None:
    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=gen).float()
    with pytest.warns(UserWarning, match=r"pixel values span \[0, 255\] but CLIP models expect \[0, 1\]"):
        result = adawise.run_stream(adawise.make_method("zeroshot", zs, ft), TensorStream(images, torch.arange(4), "d",
                                                                                          2), progress=False)
    assert len(result.records) == 2  # scored as given


def test_a_log_named_txt_keeps_its_records(tmp_path) -> None:
    log = tmp_path / "run.txt"
    adawise.run_stream(Drift(), feature_stream(), log=log, progress=False)
    assert [r["type"] for r in read_jsonl(log)][0] == "header" and read_run(log)["complete"]
    assert "drift" in (tmp_path / "run.table.txt").read_text()


def test_a_stream_without_any_readable_batch_is_an_error(tmp_path) -> None:
    from adawise.errors import DataError
    from streams.imagenet_r import IMAGENET_R_WNIDS, imagenet_r_stream

    for wnid in IMAGENET_R_WNIDS[:2]:
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "art_1.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    stream = imagenet_r_stream(tmp_path, image_size=32, num_workers=0)
    with pytest.raises(DataError, match=r"no batch could be scored: all 2 inputs of the stream were unreadable "
                                        r"\(first: .*art_1.jpg"):
        adawise.run_stream(Spy(), stream, progress=False)
    with pytest.raises(DataError, match="yielded no batch"):
        adawise.run_stream(Spy(), ListStream([]), progress=False)


def test_what_is_not_a_method_or_a_stream_is_named() -> None:
    from adawise.errors import InputTypeError
    from streams.base import Batch

    with pytest.raises(InputTypeError, match="method must be an adawise Method"):
        adawise.run_stream("zeroshot", feature_stream(), progress=False)
    with pytest.raises(InputTypeError, match="stream must be an iterable of streams.Batch"):
        adawise.run_stream(Spy(), "images/", progress=False)
    x, y = torch.rand(2, C), torch.zeros(2, dtype=torch.long)
    with pytest.raises(InputTypeError, match="yielded a tuple, not a streams.Batch"):
        adawise.run_stream(Spy(), [(x, y)], progress=False)
    assert adawise.run_stream(Spy(), [Batch(x, y, "d", 0)], progress=False).records[0]["n"] == 2  # a plain list
