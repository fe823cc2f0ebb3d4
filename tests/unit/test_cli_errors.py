"""Every command-line failure is one line and an exit code, never a traceback: the console entry point run as a
user runs it, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})


@pytest.mark.parametrize(("content", "expected"), [
    ("[" * 200_000, "nested too deeply"),  # a hostile YAML: RecursionError inside the parser
    ("benchmark:\n  iteratons: 3\n", "benchmark.iteratons: Extra inputs are not permitted"),  # a typo is named
])
def test_a_bad_options_file_is_one_line_and_exit_2(tmp_path: Path, content: str, expected: str) -> None:
    options = tmp_path / "options.yaml"
    options.write_text(content)
    result = cli("run", "--options", str(options), "--store", str(tmp_path / "store"))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output[-2000:]
    assert expected in output and "Traceback" not in output
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_an_oversized_options_file_is_refused_unread(tmp_path: Path) -> None:
    options = tmp_path / "options.yaml"
    options.write_text("# padding\n" * 200_000)
    result = cli("run", "--options", str(options))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "larger than 1,000,000 bytes" in output, output[-2000:]


def test_a_folder_given_as_audio_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from tests.support.assets import DEMO_MODEL

    (tmp_path / "clip.wav").mkdir()
    result = cli("transcribe", str(tmp_path / "clip.wav"), "--model", str(DEMO_MODEL))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert "clip.wav: no such audio file" in output


def test_an_unexpected_error_is_one_line_with_exit_4(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A bug has no real trigger to cause on purpose; the command is replaced by one that raises."""
    import flows.cli

    def broken() -> None:
        raise RuntimeError("something\nunforeseen")

    monkeypatch.setattr(flows.cli, "app", broken)
    monkeypatch.delenv("ASR_OPTIMIZE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        flows.cli.main()
    assert exit_info.value.code == 4
    out = capsys.readouterr().out.strip()
    assert "RuntimeError: something unforeseen" in out and len(out.splitlines()) <= 2  # rich may wrap once
