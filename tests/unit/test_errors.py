"""The one-paragraph error a stage prints: exit code, and paths kept intact when wrapped."""
from __future__ import annotations

import pytest

from pipeline.errors import EXIT_USER_ERROR, PipelineError, cli


def test_cli_prints_one_paragraph_and_exits_2(capsys):
    path = "/tmp/some-very-long-folder-name/with-many-hyphens-in-it/" + "x" * 120 + ".gz"

    @cli
    def main():
        raise PipelineError(f"first line\n   {path} is\nbroken")

    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("ERROR [")
    assert path in lines  # on a line of its own, never split at a hyphen or mid-word
    assert " ".join(err.split()).endswith(f"first line {path} is broken")


def test_cli_lets_bugs_raise():
    @cli
    def main():
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        main()
