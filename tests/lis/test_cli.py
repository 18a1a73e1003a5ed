"""The command line's error contract: bad input -> one line, exit 2; a bug -> one "internal error
... please report" line, exit 1; --debug (before or after the command) adds the traceback."""
from __future__ import annotations

import pytest

import lis.commands.synth as synth_command
from lis.cli import build_parser, run, split_debug
from lis.errors import DataError, one_line


def _cli_raising(monkeypatch, error):
    def handler(args):
        raise error

    monkeypatch.setattr(synth_command, "run", handler)  # registered as the handler when the parser is built
    parser = build_parser(("lis.commands.synth",))
    return lambda argv: run(parser, argv)


def _stderr_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_an_unexpected_exception_is_one_please_report_line_and_exit_1(monkeypatch, capsys):
    cli = _cli_raising(monkeypatch, ZeroDivisionError("division by zero"))
    assert cli(["synth", "--out", "x"]) == 1
    lines = _stderr_lines(capsys)
    assert len(lines) == 1
    assert "internal error (ZeroDivisionError: division by zero)" in lines[0]
    assert "please report" in lines[0] and "--debug" in lines[0]


@pytest.mark.parametrize("argv", [["--debug", "synth", "--out", "x"], ["synth", "--out", "x", "--debug"]])
def test_debug_adds_the_traceback_before_or_after_the_command(monkeypatch, capsys, argv):
    cli = _cli_raising(monkeypatch, KeyError("boom"))
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError" in err
    assert err.strip().splitlines()[-1].startswith("lis-align: internal error (KeyError")


def test_debug_shows_the_traceback_of_bad_input_too_and_keeps_exit_2(monkeypatch, capsys):
    cli = _cli_raising(monkeypatch, DataError("f.csv: column 'x' holds 3."))
    assert cli(["--debug", "synth", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "lis-align: f.csv: column 'x' holds 3."


def test_an_os_error_naming_a_file_is_bad_input(monkeypatch, capsys):
    cli = _cli_raising(monkeypatch, PermissionError(13, "Permission denied", "/root/out"))
    assert cli(["synth", "--out", "x"]) == 2
    assert _stderr_lines(capsys) == ["lis-align: /root/out: Permission denied"]


class Py4JJavaError(Exception):
    """A test double of py4j's error (named like it; the CLI matches the type by name, not by import)."""


@pytest.mark.parametrize("error, says", [
    (MemoryError(), "out of memory in this process"),
    (Py4JJavaError("An error occurred while calling o702.getResult: Job 49 cancelled because SparkContext was shut down"),
     "--spark-conf spark.driver.memory=8g"),
])
def test_running_out_of_memory_is_one_line_naming_the_setting_and_exit_3(monkeypatch, capsys, error, says):
    cli = _cli_raising(monkeypatch, error)
    assert cli(["synth", "--out", "x"]) == 3
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and says in lines[0] and "internal error" not in lines[0]


def test_other_spark_errors_stay_internal_errors(monkeypatch, capsys):
    cli = _cli_raising(monkeypatch, Py4JJavaError("An error occurred while calling o1.count: NullPointerException"))
    assert cli(["synth", "--out", "x"]) == 1
    assert "internal error (Py4JJavaError" in _stderr_lines(capsys)[0]


def test_interrupt_is_exit_130(monkeypatch, capsys):
    cli = _cli_raising(monkeypatch, KeyboardInterrupt())
    assert cli(["synth", "--out", "x"]) == 130
    assert _stderr_lines(capsys) == ["lis-align: interrupted"]


def test_a_multi_line_message_becomes_one_line(monkeypatch, capsys):
    cli = _cli_raising(monkeypatch, DataError("first\n  second\n\nthird " + "y" * 5000))
    assert cli(["synth", "--out", "x"]) == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith("lis-align: first | second | third yyy") and " ... " in line and len(line) < 700


def test_argparse_errors_are_one_line(capsys):
    parser = build_parser(("lis.commands.synth",))
    with pytest.raises(SystemExit) as exit_info:
        run(parser, ["synth", "--preset", "huge", "--out", "x"])
    assert exit_info.value.code == 2
    (line,) = _stderr_lines(capsys)
    assert "argument --preset: invalid choice: 'huge'" in line and "usage" not in line


def test_split_debug_leaves_arguments_after_a_double_dash():
    assert split_debug(["a", "--debug", "b"]) == (["a", "b"], True)
    assert split_debug(["a", "--", "--debug"]) == (["a", "--", "--debug"], False)


def test_one_line_keeps_short_messages_as_they_are():
    assert one_line("f.csv: column 'a' holds 3.") == "f.csv: column 'a' holds 3."
