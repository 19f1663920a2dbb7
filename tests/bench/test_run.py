"""`siso.bench.run`: the benchmark's settings, its runs in process (several subjects, one lever alone, Ctrl-C,
`fast`) and a failing worker."""

import pytest
import tiny

from siso.bench import BenchSettings, report


def test_a_failing_worker_is_one_line(monkeypatch, capsys):
    import subprocess

    from siso.bench.run import BenchError, _run_isolated

    def failed(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n")

    monkeypatch.setattr(subprocess, "run", failed)
    with pytest.raises(BenchError, match=r"configuration 'default' failed: KeyError: 'x'$"):
        _run_isolated(BenchSettings(), "default", 1)
    # Killed (the out-of-memory killer sends SIGKILL, and the worker writes nothing): the message says what to try.
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, -9, "", ""))
    with pytest.raises(BenchError, match=r"'default \(2 subjects\)' was killed \(signal 9\).*--gradient-checkpointing"):
        _run_isolated(BenchSettings(subjects=(1, 2)), "default", 2)


def test_bench_two_subjects_against_one(model_dirs):
    # Several subjects score the composition loss; each count's row is compared with the same configuration's one.
    from siso.bench import run_bench
    from siso.config import SimilaritySettings

    similarity = SimilaritySettings(
        dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]), dino_resolution=28
    )
    settings = BenchSettings(
        model=str(model_dirs["sd"]), configs=("default",), resolution=64, iters=1, warmup=0, device="cpu",
        similarity=similarity, isolate=False, subjects=(1, 2),
    )  # fmt: skip
    result = run_bench(settings)
    one, two = result["rows"]
    assert (one["config"], one["subjects"], one["objective"]) == ("default", 1, "SimilarityLoss")
    assert (two["config"], two["subjects"], two["objective"]) == ("default", 2, "CompositionLoss")
    assert one["loss_terms"] == ["dino", "ir", "loss"]
    assert {"identity/subject1", "identity/subject2", "leakage", "presence"} <= set(two["loss_terms"])
    assert "vs_one_subject" not in one
    ratios = two["vs_one_subject"]
    assert ratios["flops_per_iteration"] > 1  # two crops per network, and the whole image through DINOv2
    assert ratios["seconds_per_iteration"] == two["seconds_per_iteration"] / one["seconds_per_iteration"]
    assert ratios["peak_memory_gb"] > 0 and ratios["cpu_seconds_per_iteration"] > 0
    text = report(result)
    assert "| default | fp32 |" in text and "| default (2 subjects) | fp32 |" in text
    assert "Several subjects against one (the same configuration's one-subject row, as ratios):" in text
    assert f"- default (2 subjects): {ratios['seconds_per_iteration']:.2f}x the time per iteration, " in text
    assert f"{ratios['flops_per_iteration']:.2f}x the FLOPs" in text
    assert result["settings"]["subjects"] == (1, 2)


def test_bench_edits_one_subject_only():
    with pytest.raises(ValueError, match="the edit configuration measures one subject: give --subjects 1"):
        BenchSettings(configs=("default", "edit"), subjects=(1, 2))
    assert BenchSettings(configs=("edit",), subjects=(1,)).subjects == (1,)


def test_bench_measures_a_lever_alone_in_process(model_dirs):
    from siso.bench import run_bench
    from siso.config import SimilaritySettings

    similarity = SimilaritySettings(
        dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]), dino_resolution=28
    )
    settings = BenchSettings(
        model=str(model_dirs["sd"]), configs=("default",), resolution=64, iters=1, warmup=0, device="cpu",
        gradient_checkpointing=True, similarity=similarity, isolate=False,
    )  # fmt: skip
    [row] = run_bench(settings)["rows"]
    assert row["config"] == "default + checkpointing" and "speedup" not in row  # no reference ran: no ratio
    assert row["iterations"] == 2 and row["prompt_encodings"] == 0


def test_ctrl_c_during_the_loop_ends_the_benchmark(model_dirs):
    # The loop itself ends on Ctrl-C keeping its best (for `siso generate`); a benchmark must not report that run.
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from siso.bench import run_bench
    from siso.config import SimilaritySettings

    similarity = SimilaritySettings(
        dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]), dino_resolution=28
    )
    settings = BenchSettings(
        model=str(model_dirs["sd"]), configs=("default",), resolution=64, iters=3, warmup=0, device="cpu",
        similarity=similarity, isolate=False,
    )  # fmt: skip
    steps = []

    def interrupt(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_bench(settings)
    finally:
        handle.remove()
    assert len(steps) == 2


def test_bench_fast_is_labelled_a_different_loss(model_dirs, tmp_path, capsys):
    from siso.bench import run_bench
    from siso.config import SimilaritySettings

    tiny_vae = tiny.make_tiny_vae(tmp_path / "taesd")
    similarity = SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]))
    settings = BenchSettings(
        model=str(model_dirs["sd"]), configs=("default", "fast"), resolution=64, iters=1, warmup=0, device="cpu",
        similarity=similarity, tiny_vae=str(tiny_vae), isolate=False,
    )  # fmt: skip
    result = run_bench(settings)
    default, fast = result["rows"]
    assert (default["loss"], fast["loss"]) == ("paper", "fast (not the paper's)")
    assert fast["flops_per_iteration"] < default["flops_per_iteration"]  # tiny decoder, DINOv2 at 224 px
    assert "`fast` is a different loss from the paper's" in report(result)
    assert "different loss" not in report({**result, "rows": [default]})
    # A named backbone without a tiny decoder is refused before any worker starts.
    with pytest.raises(ValueError, match="no tiny VAE decoder for sana"):
        BenchSettings(model="sana", configs=("fast",))
