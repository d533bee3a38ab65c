"""One exception hierarchy: every error a user can cause is an AdawiseError (and the matching built-in); the
command line turns exactly those into exit code 2 and one plain line, and lets a bug show its traceback.
Checkpoint files are told apart by what they are: damaged, not a checkpoint, pickled objects, NaN/Inf or
integer weights, each with its own message (only a real pickle mentions --trust-pickle)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import adawise
from adawise import errors
from adawise.cli import main as cli_main
from adawise.models.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_every_error_class_is_an_adawise_error_and_its_builtin() -> None:
    pairs = {errors.UsageError: ValueError, errors.InputTypeError: TypeError,
             errors.MissingFileError: FileNotFoundError, errors.AccessError: PermissionError,
             errors.DataError: ValueError, errors.CheckpointError: ValueError,
             errors.UntrustedPickleError: RuntimeError,
             errors.StateDictMismatchError: ValueError, errors.LogError: ValueError, errors.ResumeError: ValueError,
             errors.RunLockedError: RuntimeError, errors.UnknownNameError: KeyError}
    for cls, builtin in pairs.items():
        assert issubclass(cls, errors.AdawiseError) and issubclass(cls, builtin), cls
        assert getattr(adawise, cls.__name__) is cls  # exported from the package
    assert str(errors.UnknownNameError("no method 'x'")) == "no method 'x'"  # not quoted like a KeyError
    from adawise.core.weights import StateDictMismatchError

    assert StateDictMismatchError is errors.StateDictMismatchError


def test_one_line_strips_ansi_and_line_breaks() -> None:
    assert errors.one_line("a \x1b[1mbold\x1b[0m\n  b\tc") == "a bold b c"


def test_cli_maps_adawise_errors_to_exit_2_and_one_line(tmp_path, monkeypatch, capsys) -> None:
    import adawise.apps.report

    log = tmp_path / "x.jsonl"
    log.write_text("{}\n")

    def refuse(paths):
        raise errors.LogError("first\nsecond \x1b[31mred\x1b[0m")

    monkeypatch.setattr(adawise.apps.report, "collect", refuse)
    assert cli_main(["report", str(log)]) == 2
    err = capsys.readouterr().err
    assert err == "adawise report: error: first second red\n"


def test_an_unexpected_exception_is_a_traceback_not_a_usage_error(tmp_path, monkeypatch) -> None:
    import adawise.apps.report

    log = tmp_path / "x.jsonl"
    log.write_text("{}\n")
    monkeypatch.setattr(adawise.apps.report, "collect", lambda paths: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # no catch-all: a bug propagates
        cli_main(["report", str(log)])
    # ... and as a process: a traceback and exit code 1, never a tidy "error:" line
    code = ("import adawise.apps.report as r, sys; r.collect = lambda paths: 1 / 0; from adawise.cli import main; "
            f"sys.exit(main(['report', {str(log)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_argparse_errors_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["run", "--batch-size", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size" in err and "many" in err and "--help" in err


# ----------------------------------------------------------------------------- checkpoint files


def _sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3).state_dict()


def test_a_json_file_named_pt_is_not_called_a_pickle(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    path.write_text(json.dumps({"weight": [1, 2, 3]}))
    with pytest.raises(errors.CheckpointError, match="text file") as err:
        load_checkpoint(path)
    assert "trust" not in str(err.value) and not isinstance(err.value, errors.UntrustedPickleError)


def test_random_bytes_and_a_cut_torch_file_are_damaged_not_pickles(tmp_path) -> None:
    rand = tmp_path / "random.bin"
    rand.write_bytes(bytes(range(256)) * 4)
    good = tmp_path / "good.pt"
    torch.save(_sd(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    for path, needle in ((rand, "not a checkpoint format"), (cut, "damaged torch file")):
        with pytest.raises(errors.CheckpointError, match=needle) as err:
            load_checkpoint(path)
        assert "trust" not in str(err.value)


def test_a_safetensors_file_cut_inside_its_header(tmp_path) -> None:
    good = tmp_path / "good.safetensors"
    adawise.save_state_dict(_sd(), good)
    raw = good.read_bytes()
    for name, data in (("cut.safetensors", raw[:20]), ("cut.pt", raw[:20]), ("tail.safetensors", raw[:-5])):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(errors.CheckpointError, match="damaged safetensors") as err:
            load_checkpoint(path)
        assert "trust" not in str(err.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_naming_the_key(tmp_path, value) -> None:
    sd = _sd()
    sd["bias"][1] = value
    path = tmp_path / "broken.safetensors"
    adawise.save_state_dict(sd, path)
    with pytest.raises(errors.CheckpointError, match=r"key 'bias' holds 1 NaN/Inf"):
        load_checkpoint(path)


def test_integer_and_bool_state_dicts_are_refused_naming_the_key(tmp_path) -> None:
    path = tmp_path / "ints.safetensors"
    adawise.save_state_dict({"weight": torch.ones(3, 4, dtype=torch.int64), "flag": torch.ones(2, dtype=torch.bool)},
                            path)
    with pytest.raises(errors.CheckpointError, match="only integer/bool tensors.*'weight'"):
        load_checkpoint(path)


def test_a_finetuned_checkpoint_with_integer_weights_names_the_key(tmp_path, tiny_pair) -> None:
    from adawise.models.clip import load_finetuned

    zs, _ = tiny_pair
    sd = dict(zs.state_dict())
    sd["head.weight"] = sd["head.weight"].round().to(torch.int32)
    path = tmp_path / "ft.safetensors"
    adawise.save_state_dict(sd, path)
    with pytest.raises(errors.CheckpointError, match="'head.weight' is torch.int32 but the model stores a floating"):
        load_finetuned(zs, path)
