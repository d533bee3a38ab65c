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


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny demo run through the CLI; returns (out dir, summary, printed output)."""
    import contextlib
    import io

    from adawise.cli import main

    root = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAWISE_CACHE", str(root / "cache"))
    out = root / "out"
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            code = main(["demo", "--recipe", "tiny", "--out", str(out), "--domains", "clean,invert,gaussian_noise",
                         "--per-domain", "48", "--batch-size", "16", "--methods", METHODS, "--no-progress"])
    finally:
        mp.undo()
    assert code == 0
    return out, json.loads((out / "summary.json").read_text()), buf.getvalue()


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
    from adawise.loop import run_stream
    from adawise.methods.registry import make_method
    from adawise.models.embedded import embedded_stream, load_embedded

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
                                             (["--alphas", "0.2,0.5,1"], "must contain 0 and 1")])
def test_bad_options_are_refused_before_any_work(tmp_path, monkeypatch, option, message):
    from adawise.cli import main

    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match=message):
        main(["demo", "--recipe", "tiny", "--out", str(tmp_path / "out"), "--domains", "clean", "--per-domain", "8",
              "--no-progress", *option])
    assert not (tmp_path / "cache").exists()  # refused before the world is built
