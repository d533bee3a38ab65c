"""``adawise demo`` end to end on the tiny world (trains in about a second into a temporary cache).

The full world's figures belong in docs/embedded_world.md, not here: the tiny world is not expected
to show the phenomenon, only to exercise every step and every output file.
"""

from __future__ import annotations

import json

import pytest

from streams import fashion

try:
    fashion.find_root()
    HAVE_DATA = True
except fashion.FashionMNISTError:
    HAVE_DATA = False
pytestmark = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed "
                                "(apt-get install -y dataset-fashion-mnist)")

METHODS = "zeroshot,finetuned,wiseft,adawise,adawise-anchored,adawise-grid,oracle,dawin,ose"


def _tiny_demo(root, out, *options: str) -> str:
    """``adawise demo`` on the tiny world (3 domains x 48 images, batches of 16) with ``ADAWISE_CACHE``
    under ``root``; returns what it printed."""
    import contextlib
    import io

    from adawise.cli import main

    mp = pytest.MonkeyPatch()
    mp.setenv("ADAWISE_CACHE", str(root / "cache"))
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            code = main(["demo", "--recipe", "tiny", "--out", str(out), "--domains", "clean,invert,gaussian_noise",
                         "--per-domain", "48", "--batch-size", "16", "--no-progress", *options])
    finally:
        mp.undo()
    assert code == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny demo run through the CLI; returns (out dir, summary, printed output)."""
    root = tmp_path_factory.mktemp("demo")
    out = root / "out"
    printed = _tiny_demo(root, out, "--methods", METHODS)
    return out, json.loads((out / "summary.json").read_text()), printed


def test_summary_has_the_documented_keys(demo_run):
    out, s, _ = demo_run
    assert s["id_domain"] == "clean"
    domains = ["clean", "invert", "gaussian_noise"]
    acc = s["accuracy"]
    for name in METHODS.split(","):
        assert set(acc[name]) == set(domains), name
        assert all(0.0 <= v <= 1.0 for v in acc[name].values())
    # static alphas from the shared sweep, named after the registry
    assert {"wiseft-0.2", "wiseft-0.4", "wiseft-0.6", "wiseft-0.8"} <= set(acc)
    assert "wiseft-0.5" not in acc and "wiseft-0" not in acc and s["alphas"] == [0, 0.2, 0.4, 0.5, 0.6, 0.8, 1]
    assert set(s["oracle_alpha"]) == set(domains) and all(0 <= a <= 1 for a in s["oracle_alpha"].values())
    for name, i in (("zeroshot", 0), ("wiseft", 3), ("finetuned", 6)):
        for d in domains:
            assert acc[name][d] == pytest.approx(s["static_accuracy"][d][i], abs=1e-9)
    assert set(s["phenomenon"]) == {"finetuned_minus_zeroshot_id", "zeroshot_wins_on_shifts",
                                    "wiseft_beats_endpoints_on_shift_mean", "oracle_alpha_span"}
    assert s["world"]["recipe"]["name"] == "tiny" and s["order"] == "continual"


def test_demo_writes_logs_table_and_plots(demo_run):
    out, _, printed = demo_run
    for name in METHODS.split(","):
        lines = (out / f"{name}.jsonl").read_text().splitlines()
        assert json.loads(lines[0])["type"] == "header" and json.loads(lines[-1])["type"] == "summary"
        assert len(lines) == 2 + 9  # header + 3 domains x 3 batches + summary
    for png in ("accuracy.png", "alpha.png", "objectives_vs_alpha.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    table = (out / "table.md").read_text()
    assert "oracle *" in table and "mean shifts" in table
    assert "upper bound" in printed and "seconds:" in printed


@pytest.mark.parametrize("name", ["zeroshot", "finetuned", "wiseft", "oracle", "adawise-grid", "dawin", "ose"])
def test_methods_read_from_the_sweep_match_the_registered_methods(demo_run, monkeypatch, name):
    """Static-alpha methods are replayed from the shared sweep and the output ensembles read the
    endpoints' logits from it; the registered methods, run on their own over the same stream with
    the real models, must predict the same (per batch: correct counts, alpha)."""
    from adawise.embedded.world import embedded_stream, load_embedded
    from adawise.evaluation.loop import run_stream
    from adawise.methods.registry import make_method

    out, s, _ = demo_run
    monkeypatch.setenv("ADAWISE_CACHE", str(out.parent / "cache"))
    world = load_embedded("tiny", progress=False)
    stream = embedded_stream(world, domains=["clean", "invert", "gaussian_noise"], per_domain=48, batch_size=16)
    opts = {"oracle": {"grid": s["alphas"]}, "adawise-grid": {"grid": s["alphas"]}}.get(name, {})
    method = make_method(name, zeroshot=world.zeroshot, finetuned=world.finetuned, **opts)
    result = run_stream(method, stream, progress=False)
    logged = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
    batches = [r for r in logged if r["type"] == "batch"]
    ensemble = name in ("ose", "dawin")
    assert all(r.get("replayed_from_sweep", ensemble) for r in batches)
    assert [r["correct"] for r in batches] == [r["correct"] for r in result.records]
    assert [r["entropy"] for r in batches] == pytest.approx([r["entropy"] for r in result.records], abs=1e-5)
    if not ensemble:
        assert [r["alpha"] for r in batches] == pytest.approx(result.alphas)
    assert logged[0]["uses_labels"] == (name == "oracle")  # the upper bound is marked in the header


@pytest.mark.parametrize("option, message", [(["--methods", "nope"], "unknown methods"),
                                             (["--alphas", "0.2,0.5,1"], "must contain 0 and 1"),
                                             (["--recipes", "e2e,nope"], "unknown endpoints nope; valid: e2e, "
                                                                         "r-adapter, drm"),
                                             (["--recipes", "drm,drm"], "must be distinct")])
def test_bad_options_are_refused_before_any_work(tmp_path, monkeypatch, capsys, option, message):
    from adawise.cli import main

    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    code = main(["demo", "--recipe", "tiny", "--out", str(tmp_path / "out"), "--domains", "clean", "--per-domain", "8",
                 "--no-progress", *option])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before the world is built


ENDPOINTS = ("e2e", "r-adapter", "drm")
#: no vrf: the tiny worlds' models are near chance, so VRF's Zero-Shot-Failure set can come out empty
ENDPOINT_METHODS = "zeroshot,finetuned,wiseft,adawise,adawise-anchored,oracle"


@pytest.fixture(scope="module")
def endpoints_run(demo_run):
    """``--recipes e2e,r-adapter,drm`` on the tiny world, same stream as ``demo_run`` and its cache (the e2e
    world and the shared pretraining are reused); returns (out dir, {endpoint: summary}, combined, printed)."""
    root = demo_run[0].parent
    out = root / "endpoints"
    printed = _tiny_demo(root, out, "--recipes", ",".join(ENDPOINTS), "--methods", ENDPOINT_METHODS)
    summaries = {e: json.loads((out / ("summary.json" if e == "e2e" else f"summary-{e}.json")).read_text())
                 for e in ENDPOINTS}
    return out, summaries, json.loads((out / "endpoints.json").read_text()), printed


def test_endpoints_write_their_own_files_beside_e2e(endpoints_run):
    out, summaries, combined, printed = endpoints_run
    for png in ("endpoints.png", "accuracy.png", "r-adapter/accuracy.png", "drm/objectives_vs_alpha.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png
    for where in (out, out / "r-adapter", out / "drm"):  # e2e at the top, the others in their folders
        assert (where / "table.md").is_file() and (where / "adawise-anchored.jsonl").is_file()
    assert not (out / "e2e").exists() and not (out / "drm" / "summary.json").exists()
    for e, s in summaries.items():  # each summary names its endpoint and its world
        assert s["world"]["recipe"]["endpoint"] == e and s["world"]["recipe"]["name"] == "tiny"
        assert combined["worlds"][e] == s["world"]["key"]
        header = json.loads((out / ("" if e == "e2e" else e) / "adawise.jsonl").read_text().splitlines()[0])
        assert header["config"]["endpoint"] == e and header["config"]["world"] == s["world"]["key"]
    assert len(set(combined["worlds"].values())) == 3
    table = (out / "endpoints.md").read_text()
    assert "| method | e2e clean | e2e shifts | r-adapter clean |" in table and "oracle *" in table
    assert "best static α" in table and "gain over the endpoint alone" in table
    assert "Most robust endpoint alone" in printed and "adawise-anchored +" in printed


def test_endpoints_json_holds_the_summaries_numbers(endpoints_run):
    _, summaries, c, printed = endpoints_run
    assert c["endpoints"] == list(ENDPOINTS) and c["upper_bounds"] == ["oracle"]
    assert c["methods"] == ["zeroshot", "finetuned", "wiseft", "best static α", "adawise", "adawise-anchored",
                            "oracle"]
    for e, s in summaries.items():
        assert c["best_static"][e] == s["best_static"]
        for m, cell in c["accuracy"][e].items():
            name = s["best_static"] if m == "best static α" else m
            assert cell == {"clean": s["accuracy"][name]["clean"], "mean_shifts": s["mean_shifts"][name]}
        alone = s["mean_shifts"]["finetuned"]
        gains = {m: s["mean_shifts"][m] - alone for m in ("wiseft", "adawise", "adawise-anchored")}
        assert c["gain_over_endpoint"][e] == gains
    alone = {e: s["mean_shifts"]["finetuned"] for e, s in summaries.items()}
    assert c["most_robust_alone"] == max(alone, key=alone.get)
    for e in ("r-adapter", "drm"):  # the printed text says when an endpoint alone does not beat e2e
        said = f"{e}'s fine-tuned model alone does not beat the e2e fine-tuned model" in printed
        assert said == (alone[e] <= alone["e2e"])


def test_zeroshot_and_stream_are_the_same_for_every_endpoint(endpoints_run):
    _, summaries, c, _ = endpoints_run
    first = summaries["e2e"]
    for s in summaries.values():
        assert s["accuracy"]["zeroshot"] == first["accuracy"]["zeroshot"]
        assert {k: v for k, v in s["stream_spec"].items() if k != "options"} == \
            {k: v for k, v in first["stream_spec"].items() if k != "options"}
        assert {k: v for k, v in s["stream_spec"]["options"].items() if k != "world"} == \
            {k: v for k, v in first["stream_spec"]["options"].items() if k != "world"}
    assert len({json.dumps(c["accuracy"][e]["zeroshot"]) for e in ENDPOINTS}) == 1


def test_e2e_of_several_endpoints_is_the_plain_demo(demo_run, endpoints_run):
    """e2e writes what a run without --recipes writes: same world, accuracies, sweep and per-batch logs."""
    plain_out, plain, _ = demo_run
    out, summaries, _, _ = endpoints_run
    s = summaries["e2e"]
    assert s["world"]["key"] == plain["world"]["key"]
    for key in ("static_accuracy", "oracle_alpha", "objectives_vs_alpha", "best_static", "domains", "alphas"):
        assert s[key] == plain[key], key
    for name in ENDPOINT_METHODS.split(","):
        if name in plain["accuracy"]:
            assert s["accuracy"][name] == plain["accuracy"][name], name
            batches = [[r for r in map(json.loads, (where / f"{name}.jsonl").read_text().splitlines())
                        if r["type"] == "batch"] for where in (out, plain_out)]
            assert [r["correct"] for r in batches[0]] == [r["correct"] for r in batches[1]], name


def test_mixed_dirichlet_demo_reports_every_domain(demo_run, tmp_path):
    """``--schedule mixed --order dirichlet``: every batch mixes the domains; the table and summary are per
    sample domain, and every domain holds all its images."""
    root = demo_run[0].parent  # the module's cache: the tiny world is already trained
    out = tmp_path / "mixed"
    printed = _tiny_demo(root, out, "--methods", "zeroshot,finetuned,wiseft,oracle,adawise-windowed",
                         "--schedule", "mixed", "--order", "dirichlet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["order"] == "mixed" and summary["stream_spec"]["options"]["sample_order"] == "dirichlet:0.1"
    assert summary["domains"] == ["clean", "invert", "gaussian_noise"]
    for name in ("zeroshot", "adawise-windowed"):
        assert set(summary["accuracy"][name]) == {"clean", "invert", "gaussian_noise"}
    records = [json.loads(line) for line in (out / "adawise-windowed.jsonl").read_text().splitlines()]
    counts = {}
    for r in records:
        for d, (n, _) in r.get("by_domain", {}).items():
            counts[d] = counts.get(d, 0) + n
    assert counts == {"clean": 48, "invert": 48, "gaussian_noise": 48}
    assert "schedule mixed" in printed


def test_workers_change_no_record(demo_run, tmp_path):
    """``--workers 2`` (methods side by side in forked processes) writes the same records and summary as one
    process: the same figures (the config hashes differ only through ``--out``; ``--workers`` is not part of a
    run's config)."""
    out, summary, _ = demo_run
    methods = "zeroshot,adawise,adawise-windowed,tent,tda"
    one, two = tmp_path / "one", tmp_path / "two"
    _tiny_demo(out.parent, one, "--methods", methods, "--workers", "1")
    printed = _tiny_demo(out.parent, two, "--methods", methods, "--workers", "2")
    assert "(worker)" in printed  # the methods that run on their own did run in workers

    def records(folder, name):
        lines = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items()
                 if not k.startswith("seconds") and k not in ("started", "config", "config_hash")} for r in lines]

    for name in methods.split(","):
        assert records(one, name) == records(two, name), name
    header = json.loads((two / "zeroshot.jsonl").read_text().splitlines()[0])
    assert "workers" not in header["config"]
    first, second = (json.loads((f / "summary.json").read_text()) for f in (one, two))
    for key in ("accuracy", "per_domain", "alphas", "mean_shifts", "static_accuracy", "oracle_alpha"):
        assert first[key] == second[key], key


def test_workers_must_be_positive(tmp_path, capsys):
    from adawise.cli import main

    code = main(["demo", "--recipe", "tiny", "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert code == 2 and "--workers" in capsys.readouterr().err
