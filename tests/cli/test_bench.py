"""``siso bench`` (`siso.cli.bench`): every column on the tiny models, and bad settings refused in one line."""

import json

import pytest

from siso.bench import BenchSettings
from siso.bench.measure import optim_settings
from siso.cli import main


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
