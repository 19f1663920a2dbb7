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


def test_bench_refine_times_its_inversion_then_its_iterations_against_default(model_dirs):
    # `siso refine`'s run: the image inverted at the refine's strength, then iterations with the background and
    # structure terms; reported beside `default`, as ratios to it.
    from siso.bench import run_bench
    from siso.config import SimilaritySettings

    similarity = SimilaritySettings(
        dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]), dino_resolution=28
    )
    settings = BenchSettings(
        model=str(model_dirs["sd"]), configs=("default", "refine"), resolution=64, iters=1, warmup=0, device="cpu",
        similarity=similarity, isolate=False,
    )  # fmt: skip
    result = run_bench(settings)
    default, refine = result["rows"]
    assert (refine["config"], refine["objective"], refine["iterations"]) == ("refine", "EditObjective", 2)
    assert {"identity/dog", "presence", "similarity", "background", "structure"} <= set(refine["loss_terms"])
    # SD-Turbo edits on 4 steps; at strength 0.5 the inversion redoes 2 of them, ReNoise passes at each.
    inversion = refine["inversion"]
    assert inversion["seconds"] > 0 and inversion["model_evaluations"] >= 2
    assert refine["seconds_per_iteration"] > 0 and refine["flops_per_iteration"] > default["flops_per_iteration"]
    assert refine["parts_seconds"]["dino"] > 0  # the structure term runs DINOv2 on the region too
    ratios = refine["vs_default"]
    assert ratios["seconds_per_iteration"] == refine["seconds_per_iteration"] / default["seconds_per_iteration"]
    assert ratios["inversion"] == inversion["seconds"] / default["seconds_per_iteration"]
    assert ratios["inversion_cpu"] == inversion["cpu_seconds"] / default["cpu_seconds_per_iteration"] > 0
    assert ratios["peak_memory_gb"] > 0 and ratios["flops_per_iteration"] > 1
    assert "speedup" not in refine and "vs_default" not in default
    text = report(result)
    assert "| refine | fp32 |" in text
    assert f"`refine`: the image was inverted first ({inversion['model_evaluations']} denoiser passes, " in text
    assert "add the background and structure terms, so it has no ratio to the reference." in text
    assert "Editing and refining against `default` (its row, as ratios):" in text
    assert f"- refine: {ratios['seconds_per_iteration']:.2f}x the time per iteration, " in text
    assert f"its inversion took as long as {ratios['inversion']:.2f} `default` iterations " in text
    assert f"({ratios['inversion_cpu']:.2f} in CPU time)" in text


def test_bench_refine_is_refused_on_a_backbone_that_cannot_edit(model_dirs, monkeypatch, capsys):
    from siso.backbones import resolve_model
    from siso.cli import main

    with pytest.raises(ValueError, match="the refine configuration measures one subject: give --subjects 1 for it"):
        BenchSettings(configs=("refine",), subjects=(1, 2))
    family = resolve_model(str(model_dirs["sd"]))[1]
    monkeypatch.setattr(family, "supports_editing", False)
    with pytest.raises(ValueError, match=r"^the refine configuration needs a backbone that edits: .* cannot edit yet"):
        BenchSettings(model=str(model_dirs["sd"]), configs=("default", "refine"))
    # From the command line: one line, before any worker starts.
    assert main(["bench", "--model", str(model_dirs["sd"]), "--config", "refine", "--dino-model", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("siso: error: the refine configuration needs a backbone that edits: ")
    assert len(err.strip().splitlines()) == 1


def test_an_edit_under_a_lever_is_compared_with_the_default_under_it(monkeypatch):
    import siso.bench.run as bench_run

    def row(name, seconds, inversion=None):
        return {"config": f"{name} + checkpointing", "subjects": 1, "seconds_per_iteration": seconds,
                "cpu_seconds_per_iteration": 2 * seconds, "peak_memory_gb": seconds, "flops_per_iteration": 1e9,
                "inversion": inversion}  # fmt: skip

    inversion = {"seconds": 5.0, "cpu_seconds": 8.0, "model_evaluations": 9}
    rows = {"default": row("default", 2.0), "refine": row("refine", 3.0, inversion)}
    monkeypatch.setattr(bench_run, "_run", lambda settings, name, count: rows[name])
    settings = BenchSettings(configs=("default", "refine"), gradient_checkpointing=True, isolate=False, device="cpu")
    default, refine = bench_run.run_bench(settings)["rows"]
    assert refine["vs_default"] == {"seconds_per_iteration": 1.5, "cpu_seconds_per_iteration": 1.5,
                                    "peak_memory_gb": 1.5, "flops_per_iteration": 1.0, "inversion": 2.5,
                                    "inversion_cpu": 2.0}  # fmt: skip
    assert "vs_default" not in default
