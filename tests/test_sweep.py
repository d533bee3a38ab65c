"""adawise sweep: grid expansion, restartable execution (locally and on a local Ray cluster), merging."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adawise.apps import sweep
from adawise.apps.sweep import SweepConfig, SweepError, run_sweep
from adawise.evaluation.logs import read_run

TINY = {
    "kind": "random-clip",
    "config": {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "num_classes": 5,
    "seed": 0,
}
SYNTH = {"source": "corruptions", "base": "synthetic", "base_size": 16, "image_size": 32, "num_classes": 5,
         "domains": ["clean", "gaussian_noise"], "batch_size": 8, "severity": 3}
CONFIG = {
    "models": {"tiny": TINY},
    "streams": {"synth": SYNTH},
    "methods": ["zeroshot", {"name": "adawise", "options": {"grid_size": 41}}],
    "seeds": [0, 1],
}


def _config(out: Path, **changes) -> SweepConfig:
    data = copy.deepcopy(CONFIG)
    data.update(changes)
    data["out"] = str(out)
    return SweepConfig.from_dict(data)


def _batches(path: str | Path) -> list[dict]:
    """A log's batch records without timings (what must match between executions)."""
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in read_run(path)["batches"]]


def _comparable(merged: dict) -> dict:
    return {"runs": [{k: v for k, v in r.items() if k != "log"} for r in merged["runs"]],
            "groups": merged["groups"], "missing": merged["missing"]}


def _mtimes(result) -> dict[str, int]:
    return {r.run_id: os.stat(r.log).st_mtime_ns for r in result.runs}


def _kill_two(result) -> tuple[str, str]:
    """Simulate an interrupted sweep: drop one log's summary line and delete another log."""
    first, second = result.runs[1], result.runs[2]
    lines = Path(first.log).read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "summary"
    Path(first.log).write_text("".join(lines[:-2]))  # the summary and the last batch: killed mid-run
    Path(second.log).unlink()
    return first.run_id, second.run_id


# --------------------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------------------
def test_grid_expansion_ids_and_paths(tmp_path):
    cfg = _config(tmp_path / "out", settings=["continual", "reset_each_shift"])
    runs = cfg.runs()
    assert len(runs) == 1 * 1 * 2 * 2 * 2
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in _config(tmp_path / "out", settings=["continual", "reset_each_shift"]).runs()] == \
        [r.run_id for r in runs]  # stable
    run = next(r for r in runs if r.method == "adawise" and r.seed == 1 and r.setting == "continual")
    assert Path(run.log) == tmp_path / "out" / "tiny" / "synth" / "adawise-continual-s1.jsonl"
    # changing one method's options changes only that method's run ids
    other = _config(tmp_path / "out", settings=["continual", "reset_each_shift"],
                    methods=["zeroshot", {"name": "adawise", "options": {"grid_size": 51}}]).runs()
    for a, b in zip(runs, other, strict=True):
        assert (a.run_id == b.run_id) == (a.method == "zeroshot")


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown sweep config key"),
    ({"methods": ["no-such-method"]}, "unknown method"),
    ({"methods": ["zeroshot", "zeroshot"]}, "appear twice"),
    ({"streams": {"s": {**SYNTH, "seed": 3}}}, "remove 'seed'"),
    ({"settings": ["sometimes"]}, "settings"),
    ({"models": {"m": {"kind": "hub"}}}, "kind must be one of"),
    ({"methods": ["vrf"]}, "options.index"),
])
def test_config_errors_say_what_to_fix(tmp_path, change, message):
    with pytest.raises(SweepError, match=message):
        _config(tmp_path, **change)


def test_toml_config_gives_the_same_runs(tmp_path):
    (tmp_path / "sweep.toml").write_text(f"""
out = "{tmp_path / 'out'}"
seeds = [0, 1]
methods = ["zeroshot", {{ name = "adawise", options = {{ grid_size = 41 }} }}]

[models.tiny]
kind = "random-clip"
num_classes = 5
seed = 0
config = {json.dumps(TINY["config"]).replace('":', '" =')}

[streams.synth]
{chr(10).join(f"{k} = {json.dumps(v)}" for k, v in SYNTH.items())}
""")
    from_toml = SweepConfig.load(tmp_path / "sweep.toml").runs()
    assert [r.run_id for r in from_toml] == [r.run_id for r in _config(tmp_path / "out").runs()]


def test_example_config_expands():
    example = Path(__file__).resolve().parents[1] / "examples" / "sweep.json"
    cfg = SweepConfig.load(example)
    runs = cfg.runs()
    assert runs and all(r.log.endswith(".jsonl") for r in runs)


# --------------------------------------------------------------------------------------------------
# the sequential path (no Ray)
# --------------------------------------------------------------------------------------------------
def test_local_sweep_restarts_only_unfinished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "_ray_available", lambda: False)  # as without Ray installed
    with pytest.raises(SweepError, match="adawise\\[ray\\]"):
        run_sweep(_config(tmp_path / "x"), executor="ray", progress=False)
    with pytest.raises(SweepError, match="adawise\\[ray\\]"):  # an address never falls back to local
        run_sweep(_config(tmp_path / "x"), address="auto", progress=False)
    cfg = _config(tmp_path / "out")
    first = run_sweep(cfg, executor="auto", progress=False)
    assert first.executor == "local" and first.ok
    assert len(first.executed) == 4 and not first.skipped
    table = first.paths["table"].read_text()
    assert "| adawise | 2 |" in table and first.paths["plot"].is_file()
    logs = {r.run_id: _batches(r.log) for r in first.runs}
    before = _mtimes(first)

    killed = _kill_two(first)
    second = run_sweep(cfg, executor="local", progress=False)
    assert sorted(second.executed) == sorted(killed)
    assert len(second.skipped) == 2
    after = _mtimes(second)
    assert {k for k in before if before[k] != after[k]} == set(killed)  # untouched logs were not rewritten
    assert {r.run_id: _batches(r.log) for r in second.runs} == logs
    assert _comparable(second.merged) == _comparable(first.merged)
    assert second.paths["table"].read_text() == table

    third = run_sweep(cfg, executor="local", progress=False)  # nothing left to do
    assert third.executed == [] and _mtimes(third) == after


def test_failed_runs_are_reported_and_others_complete(tmp_path):
    bad = {**SYNTH, "domains": ["no_such_corruption"]}
    cfg = _config(tmp_path / "out", streams={"synth": SYNTH, "bad": bad}, methods=["zeroshot"], seeds=[0])
    result = run_sweep(cfg, executor="local", progress=False)
    assert len(result.failed) == 1 and not result.ok
    assert "no_such_corruption" in next(iter(result.failed.values()))
    assert [r["stream"] for r in result.merged["runs"]] == ["synth"]
    assert "Missing (1)" in result.paths["table"].read_text()


def test_log_of_another_configuration_stops_the_sweep(tmp_path):
    run_sweep(_config(tmp_path / "out", methods=["zeroshot"], seeds=[0]), executor="local", progress=False)
    changed = _config(tmp_path / "out", methods=[{"name": "wiseft", "options": {"alpha": 0.3}, "label": "zeroshot"}],
                      seeds=[0])
    with pytest.raises(SweepError, match="another configuration"):
        run_sweep(changed, executor="local", progress=False)


def test_cli_dry_run_and_merge_only(tmp_path, capsys):
    from adawise.cli import main

    cfg_path = tmp_path / "sweep.json"
    cfg_path.write_text(json.dumps({**CONFIG, "methods": ["zeroshot"], "seeds": [0], "out": str(tmp_path / "o")}))
    assert main(["sweep", str(cfg_path), "--dry-run"]) == 0
    assert "1 new" in capsys.readouterr().out
    assert main(["sweep", str(cfg_path), "--local", "--no-progress"]) == 0
    assert main(["sweep", str(cfg_path), "--merge-only"]) == 0
    out = capsys.readouterr().out
    assert "| zeroshot | 1 |" in out
    assert main(["sweep", str(tmp_path / "missing.json")]) == 2


def test_killed_process_resumes_where_it_stopped(tmp_path):
    """A real kill (SIGKILL of `adawise sweep --local`): the rerun executes exactly the runs without a
    complete log, resumes the interrupted one, and ends with the same logs as an uninterrupted sweep."""
    long = {**SYNTH, "base_size": 48, "domains": ["clean", "gaussian_noise", "fog"]}
    data = {**CONFIG, "streams": {"synth": long}, "methods": [{"name": "adawise", "options": {"grid_size": 41}}],
            "seeds": [0, 1, 2], "out": str(tmp_path / "out")}
    cfg_path = tmp_path / "sweep.json"
    cfg_path.write_text(json.dumps(data))
    cfg = SweepConfig.from_dict(data)
    proc = subprocess.Popen([sys.executable, "-m", "adawise", "sweep", str(cfg_path), "--local", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second_log = Path(cfg.runs()[1].log)
    deadline = time.time() + 90
    try:  # kill it in the middle of the second run
        while time.time() < deadline and proc.poll() is None:
            if second_log.is_file() and len(read_run(second_log)["batches"]) >= 2:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    status = sweep.plan(cfg.runs())
    unfinished = sorted(rid for rid, s in status.items() if s != "complete")
    assert status[cfg.runs()[0].run_id] == "complete" and unfinished
    assert status[cfg.runs()[1].run_id] == "partial"  # resumed below from its last complete batch
    resumed = run_sweep(cfg, executor="local", progress=False)
    assert sorted(resumed.executed) == unfinished and resumed.ok
    fresh = run_sweep(_config(tmp_path / "fresh", streams={"synth": long}, methods=data["methods"],
                              seeds=[0, 1, 2]), executor="local", progress=False)
    assert _comparable(resumed.merged) == _comparable(fresh.merged)
    for a, b in zip(resumed.runs, fresh.runs, strict=True):
        assert _batches(a.log) == _batches(b.log)


def _have_fashion_mnist() -> bool:
    from streams import fashion

    try:
        fashion.find_root()
        return True
    except fashion.FashionMNISTError:
        return False


@pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST not installed (dataset-fashion-mnist)")
def test_embedded_world_sweep(tmp_path, monkeypatch):
    """The embedded world as a sweep model: built once by the driver (tiny recipe), read from the cache."""
    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    cfg = SweepConfig.from_dict({
        "models": {"emb": {"kind": "embedded", "recipe": "tiny"}},
        "streams": {"emb": {"source": "embedded", "domains": ["clean", "gaussian_noise", "invert"],
                            "per_domain": 32, "batch_size": 16}},
        "methods": ["zeroshot", {"name": "adawise", "options": {"grid_size": 41}}],
        "id_domain": "clean", "out": str(tmp_path / "out")})
    result = run_sweep(cfg, executor="local", progress=False)
    assert result.ok and len(result.executed) == 2
    group = result.merged["groups"][0]
    assert group["domains"] == ["clean", "gaussian_noise", "invert"]
    assert read_run(result.runs[0].log)["header"]["models"]  # provenance of the embedded models is logged


# --------------------------------------------------------------------------------------------------
# Ray (a local cluster of 2 CPUs)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sweep_equals_sequential_and_restarts(tmp_path, ray_cluster):
    local = run_sweep(_config(tmp_path / "local"), executor="local", progress=False)
    cfg = _config(tmp_path / "ray")
    distributed = run_sweep(cfg, executor="ray", progress=False)
    assert distributed.executor == "ray" and distributed.ok and len(distributed.executed) == 4
    assert set(distributed.tasks) == set(distributed.executed)  # where each run ran (host, pid, seconds)
    assert ray_cluster.is_initialized()  # a session the caller started is left running
    assert _comparable(distributed.merged) == _comparable(local.merged)
    for a, b in zip(local.runs, distributed.runs, strict=True):
        assert _batches(a.log) == _batches(b.log)  # each log exactly as the local run wrote it
        assert read_run(b.log)["header"]["config"]["sweep_run_id"] == a.run_id
    table = distributed.paths["table"].read_text()
    assert table == local.paths["table"].read_text()

    before = _mtimes(distributed)
    killed = _kill_two(distributed)
    again = run_sweep(cfg, executor="ray", progress=False)
    assert sorted(again.executed) == sorted(killed)
    after = _mtimes(again)
    assert {k for k in before if before[k] != after[k]} == set(killed)
    assert _comparable(again.merged) == _comparable(local.merged)
    assert again.paths["table"].read_text() == table


def test_ray_driver_writes_logs_a_worker_kept_elsewhere(tmp_path, ray_cluster):
    """Without a shared filesystem the task's returned log text is written by the driver."""
    cfg = _config(tmp_path / "out", methods=["zeroshot"], seeds=[0])
    run = cfg.runs()[0]
    out = ray_cluster.get(ray_cluster.remote(sweep.execute_run).remote(run))
    text = Path(run.log).read_text()
    Path(run.log).unlink()  # as if written on another node
    sweep._store(run, out)
    assert Path(run.log).read_text() == text
    assert sweep.plan([run]) == {run.run_id: "complete"}
