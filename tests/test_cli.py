"""The `adawise` command: entry points, help, one module per subcommand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adawise import cli


def test_python_m_adawise_help_exits_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "adawise", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: adawise" in proc.stdout
    assert "report" in proc.stdout  # available subcommands are listed


def test_no_arguments_prints_help(capsys) -> None:
    assert cli.main([]) == 0
    assert "usage: adawise" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["frobnicate"])
    assert err.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


def test_demo_help_lists_options(capsys) -> None:
    with pytest.raises(SystemExit) as err:  # argparse's --help
        cli.main(["demo", "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert "usage: adawise demo" in out and "--recipe" in out and "--methods" in out


def test_report_help_lists_options(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["report", "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert "usage: adawise report" in out and "--out" in out and "--id-domain" in out


def test_every_listed_command_names_a_module() -> None:
    parser = cli.build_parser()
    shown = parser.format_help()
    import importlib

    for name, (module, help_text) in cli.COMMANDS.items():
        assert module.count(".") >= 1 and help_text and name in shown
        loaded = importlib.import_module(module)  # every command's module exists and has the interface
        assert callable(loaded.add_arguments) and callable(loaded.main)
