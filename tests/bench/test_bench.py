"""`siso bench`: every column, on the tiny models (the real-size architectures are too large for the test machine)."""

import json

import pytest
import tiny
import torch

from siso.bench import BenchSettings, report
from siso.bench.architectures import MODELS, build_backbone, build_similarity, published_config
from siso.bench.measure import optim_settings
from siso.cli import main

# Published parameter counts (model cards and papers), in millions, that the shipped configs must reproduce.
PARAMETERS = {
    "sd-turbo": {"unet": 866, "vae": 84, "text_encoder": 340},
    "sdxl-turbo": {"unet": 2567, "vae": 84, "text_encoder": 123, "text_encoder_2": 695},
    "flux-schnell": {"transformer": 11891, "vae": 84, "text_encoder": 123, "text_encoder_2": 4762},
    "sana": {"transformer": 1604, "vae": 353, "text_encoder": 2614},
}


def test_cli_bench_reports_every_column_and_the_reference_is_the_reference_code(
    model_dirs, similarity_args, tmp_path, capsys
):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dirs["sd"]), "--resolution", "64", "--iters", "2", "--device", "cpu"]
    args += similarity_args
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| config | dtype | s/iter (min-max) | CPU s/iter (in kernel) | peak memory | GFLOP/iter |" in text
    assert "Page faults per iteration (each maps in a page of fresh memory" in text
    assert "CPU seconds in the kernel per iteration by part (median; mostly page faults):" in text
    # This process's allocator for siso's row (the test runs in-process, where nothing is preloaded), the system's
    # for the reference: each row says which it ran on.
    assert "the reference runs on the system's malloc): reference malloc, default malloc." in text
    assert "| reference | fp32 |" in text and "| default | fp32 |" in text  # auto = fp32 on a CPU
    result = json.loads(out.read_text())
    reference, default = result["rows"]
    for row in (reference, default):
        assert row["iterations"] == 4  # warm-up + 2 measured + the last (no backward, not measured)
        assert row["seconds_min"] <= row["seconds_per_iteration"] <= row["seconds_max"]
        assert row["peak_memory_kind"] == "process RSS" and row["peak_memory_gb"] > 0
        assert row["flops_per_iteration"] > 0 and row["achieved_tflops"] > 0 and row["share_of_peak"] is None
        assert set(row["parts_seconds"]) == {"denoiser", "vae decode", "dino", "ir", "optimizer step", "other"}
        assert all(v >= 0 for v in row["parts_seconds"].values()) and row["parts_seconds"]["denoiser"] > 0
        assert row["first_image_seconds"] > 0 and row["cpu_seconds_per_iteration"] > 0
        assert 0 <= row["kernel_cpu_seconds_per_iteration"] <= row["cpu_seconds_per_iteration"]
        assert row["page_faults_per_iteration"] >= 0
        kernel = row["parts_kernel_seconds"]  # where the kernel's CPU time went, part by part
        assert set(kernel) == set(row["parts_seconds"]) and all(v >= 0 for v in kernel.values())
        assert sum(kernel.values()) >= row["kernel_cpu_seconds_per_iteration"] - 1e-6  # "other" takes the rest
    assert reference["allocator"] == default["allocator"] == "malloc"
    assert reference["prompt_encodings"] == 4 and default["prompt_encodings"] == 0  # re-encoded every iteration
    assert reference["dtype"] == "fp32" and reference["speedup"] == 1.0
    assert default["speedup"] > 0 and default["memory_ratio"] > 0


def test_bench_refuses_what_it_cannot_build(capsys):
    assert main(["bench", "--model", "my/model", "--iters", "1"]) == 2
    assert "siso bench builds these backbones at their published architectures: sdxl-turbo" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown benchmark configuration"):
        BenchSettings(configs=("nope",))
    # Settings a worker would refuse are refused before any worker starts, in one line.
    assert main(["bench", "--resolution", "100", "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("siso: error: resolution must be a multiple of 64") and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="grad_steps must be between 1"):
        BenchSettings(grad_steps=0)
    # More steps with gradient than SD-Turbo's one step: the steps grow with them.
    assert optim_settings("sd-turbo", BenchSettings(grad_steps=3)).num_inference_steps == 3
    assert main(["bench", "--iters", "0"]) == 2
    assert "--iters must be >= 1, got 0" in capsys.readouterr().err


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


@pytest.mark.parametrize("model", MODELS)
def test_shipped_configs_are_the_published_architectures(model):
    backbone = build_backbone(model, "meta", torch.bfloat16)
    for name, millions in PARAMETERS[model].items():
        count = sum(p.numel() for p in getattr(backbone.pipe, name).parameters())
        assert round(count / 1e6) == millions, name
    assert backbone.dtype == torch.bfloat16 and backbone.resolution == 512
    assert set(published_config(model)["components"]) == set(PARAMETERS[model])
    cond = backbone.encode_prompt("a photo of a dog", 4.5)  # the stand-in tokenizers pad as the real ones
    lengths = {"sd-turbo": 77, "sdxl-turbo": 77, "flux-schnell": 256, "sana": 256}
    assert cond["prompt_embeds"].shape[1] == lengths[model]


def test_similarity_networks_are_dinov2_large_and_clip_vit_h():
    nets = build_similarity("meta", torch.float32)
    assert {k: round(sum(p.numel() for p in v.parameters()) / 1e6) for k, v in nets.items()} == {"dino": 304, "ir": 632}


def test_report_of_a_cpu_run_says_unknown_peak():
    parts = dict.fromkeys(["denoiser", "vae decode", "dino", "ir", "optimizer step", "other"], 0.1)
    row = {"config": "default", "subjects": 1, "dtype": "fp32", "seconds_per_iteration": 2.0, "seconds_min": 1.0,
           "seconds_max": 3.0, "cpu_seconds_per_iteration": 3.5, "peak_memory_gb": None, "peak_memory_kind": None,
           "flops_per_iteration": 4e12, "achieved_tflops": 2.0, "share_of_peak": None, "first_image_seconds": 9.0,
           "parts_seconds": parts}  # fmt: skip
    result = {"settings": {"model": "sd-turbo", "resolution": 512, "iters": 5, "warmup": 1}, "device": "CPU",
              "threads": 2, "torch": "2.13", "rows": [row]}  # fmt: skip
    text = report(result)
    assert "| default | fp32 | 2.000 (1.000-3.000) | 3.500 | n/a | 4000.0 | 2.000 | unknown | 9.0 s |  |" in text


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


@pytest.mark.parametrize(
    ("subjects", "message"),
    [
        ("two", "--subjects takes subject counts, e.g. 2 or 1,2; got 'two'"),
        ("1,", "--subjects takes subject counts, e.g. 2 or 1,2; got '1,'"),
        ("5", "subjects must be between 1 and 4, got [5]"),
        ("0,2", "subjects must be between 1 and 4, got [0, 2]"),
        ("2,2", "subjects must name each subject count once, got [2, 2]"),
    ],
)
def test_bench_refuses_bad_subject_counts_in_one_line(subjects, message, capsys):
    assert main(["bench", "--subjects", subjects, "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"siso: error: {message}\n"


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


@pytest.mark.parametrize("offload", [True, False])
def test_flop_count_leaves_the_text_encoders_as_the_loop_does(model_dirs, subject, make_config, offload):
    # Counting encodes the prompt; with offloading the encoders go out again before the iteration is counted (at real
    # size SDXL-Turbo's 2.8 GB of text encoders on top of the iteration did not fit in 24 GB).
    from siso.backbones import load_backbone
    from siso.bench.timing import count_flops
    from siso.lora import add_lora
    from siso.losses import SimilarityLoss

    config = make_config("sd", max_iters=1)
    config.memory.offload_text_encoders = offload
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    add_lora(backbone, config.lora)
    backbone.park_text_encoders()  # as the loop leaves them
    loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, backbone.device, backbone.dtype)
    opt = config.optim

    def render(cond):
        return backbone.sample(cond, torch.Generator().manual_seed(0), opt.num_inference_steps, opt.grad_steps)

    assert count_flops(backbone, render, loss_fn, config, encode=True) > 0
    assert (backbone.pipe.text_encoder is None) == offload
