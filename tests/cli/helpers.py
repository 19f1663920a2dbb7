"""What the command-line tests share: the one-line error check and minimal command lines."""

from pathlib import Path

from siso.cli import main

NOT_A_MODEL = "/nonexistent/model"  # had anything loaded before the check, this would be the error


def _error(capsys, args) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), captured.err
    return lines[0]


def _generate_args(subject_path, tmp_path):
    return ["generate", "--subject", str(subject_path), "--prompt", "x", "--out", str(tmp_path / "o")]


def _reuse_args(tmp_path, lora=None):
    return ["generate", "--lora", str(lora or tmp_path / "lora"), "--prompt", "x", "--out", str(tmp_path / "o")]


def _eval_args(command, tmp_path):
    args = ["eval", command, "--suite", "dreambench", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")]
    return [*args, "--generated", str(tmp_path / "g")] if command == "score" else [*args, "--model", NOT_A_MODEL]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
