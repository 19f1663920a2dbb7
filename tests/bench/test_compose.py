"""`siso.bench.compose`: ``compose-saved`` times the single-subject ``--lora`` image against the composed one (K + 1
denoiser passes a step) and a polish iteration against ``default``'s single-subject iteration, which runs with it."""

import json

import pytest

from siso.bench import BenchSettings, report, run_bench
from siso.cli import main
from siso.config import SimilaritySettings


def test_compose_saved_brings_its_baseline_and_measures_one_subject_beside_it():
    # With compose-saved, --subjects counts its saved subjects; every other configuration measures one subject (an
    # edit and a refine too), and `default`, its baseline, runs just before it when not named.
    settings = BenchSettings(configs=("reference", "edit", "compose-saved", "fast"), subjects=(2,), device="cpu")
    assert settings.plan() == [("reference", 1), ("edit", 1), ("default", 1), ("compose-saved", 2), ("fast", 1)]
    settings = BenchSettings(configs=("default", "compose-saved"), subjects=(1, 3), device="cpu")
    assert settings.plan() == [("default", 1), ("compose-saved", 1), ("compose-saved", 3)]
    # Without it, as before: each configuration at each count.
    settings = BenchSettings(configs=("default",), subjects=(1, 2), device="cpu")
    assert settings.plan() == [("default", 1), ("default", 2)]


@pytest.mark.parametrize(
    ("subjects", "message"),
    [("1.5", "--subjects takes subject counts, e.g. 2 or 1,2; got '1.5'"), ("0", "subjects must be between 1 and 4")],
)
def test_compose_saved_refuses_a_subject_count_that_is_not_one_or_more_in_one_line(subjects, message, capsys):
    assert main(["bench", "--config", "compose-saved", "--subjects", subjects, "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"siso: error: {message}") and len(err.strip().splitlines()) == 1


def test_compose_saved_against_the_lora_image_and_the_default_iteration(model_dirs, tmp_path, capsys):
    similarity = SimilaritySettings(
        dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]), dino_resolution=28
    )
    settings = BenchSettings(
        model=str(model_dirs["sd"]), configs=("compose-saved",), resolution=64, iters=1, warmup=0, device="cpu",
        similarity=similarity, isolate=False, subjects=(2,),
    )  # fmt: skip
    result = run_bench(settings)
    default, composed = result["rows"]
    assert (default["config"], default["subjects"], default["objective"]) == ("default", 1, "SimilarityLoss")
    assert (composed["config"], composed["subjects"], composed["objective"]) == ("compose-saved", 2, "CompositionLoss")
    # The polish: the composed loss of both subjects, every iteration timed as a learning run's is.
    assert {"identity/subject1", "identity/subject2", "leakage", "presence"} <= set(composed["loss_terms"])
    assert composed["iterations"] == 2 and composed["flops_per_iteration"] > 0
    assert composed["parts_seconds"]["denoiser"] > 0 and composed["parts_seconds"]["optimizer step"] > 0
    # SD-Turbo draws in one step: the single-subject image is one denoiser pass, the composed one a pass per subject
    # and one bare pass (the default slots leave a strip above and below the subjects).
    c = composed["composition"]
    assert (c["adapters"], c["steps"], c["rank"]) == (2, 1, 4)
    assert c["boxes"] == ["0,0.1,0.5,0.9", "0.5,0.1,1,0.9"]
    assert (c["lora_image"]["denoiser_passes"], c["composed_image"]["denoiser_passes"]) == (1, 3)
    image = c["vs_lora_image"]
    assert image["denoiser_passes"] == 3.0
    assert image["seconds"] == c["composed_image"]["seconds"] / c["lora_image"]["seconds"] > 0
    polish = composed["vs_default"]
    assert polish["seconds_per_iteration"] == composed["seconds_per_iteration"] / default["seconds_per_iteration"]
    assert polish["flops_per_iteration"] > 1 and polish["peak_memory_gb"] > 0  # three passes, two crops
    assert "speedup" not in composed and "inversion" not in polish and "vs_default" not in default
    text = report(result)
    assert "| default | fp32 |" in text and "| compose-saved (2 subjects) | fp32 |" in text
    assert "`compose-saved (2 subjects)`: the LoRA adapters of 2 saved subjects (rank 4, random weights)" in text
    assert "; 3 denoiser passes in 1 step), the single-subject `--lora` image " in text
    assert "Composing saved subjects against one subject (as ratios):" in text
    assert f"- compose-saved (2 subjects): the image {image['seconds']:.2f}x the time of a single-subject" in text
    assert f"3.00x the denoiser passes); a polish iteration {polish['seconds_per_iteration']:.2f}x the time" in text
    assert "Editing and refining against `default`" not in text
    json.dumps(result)  # written as --json writes it
