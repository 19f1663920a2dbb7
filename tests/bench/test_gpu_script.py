"""``benchmarks/gpu.sh --tiny``: the prepared GPU run, end to end, with tiny random models on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# On tiny models: every configuration once, on sd-turbo, and each other backbone once (what it alone has: sdxl-turbo's
# edit, flux-schnell's tiny VAE); the real-size run does every configuration on every backbone.
EXPECTED = {
    "sd-turbo": ["reference", "default", "fast", "edit", "refine", "compose-saved"],
    "sdxl-turbo": ["edit"],
    "flux-schnell": ["fast"],
    "sana": ["default"],
}


def test_the_gpu_script_runs_every_backbone_the_edit_the_refine_and_compose_saved_on_tiny_models(tmp_path):
    # One thread per process: tiny models gain nothing from more, and on a busy machine two threads of a shared core
    # wait on each other (a tiny 1-step image took 3.7 s instead of 0.08 s beside other work on 2 cores).
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "SISO_TCMALLOC": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # At most 8 files: what the GPU machine's tool brings back.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"bench-{model}.{kind}" for model in EXPECTED for kind in ("md", "json")
    )
    for model, configs in EXPECTED.items():
        result = json.loads((tmp_path / f"bench-{model}.json").read_text())
        rows = {row["config"]: row for row in result["rows"]}
        assert list(rows) == configs
        assert all(row["seconds_per_iteration"] > 0 and row["flops_per_iteration"] > 0 for row in rows.values())
        report = (tmp_path / f"bench-{model}.md").read_text()
        assert report.startswith("siso bench: ")
        if "reference" in rows:
            assert rows["default"]["speedup"] > 0 and rows["reference"]["dtype"] == "fp32"
            assert "| reference | fp32 |" in report
        if "edit" in rows:
            assert rows["edit"]["inversion"]["model_evaluations"] > 0 and "speedup" not in rows["edit"]
            assert "`edit`: the photo was inverted first" in report
        if "refine" in rows:
            refine = rows["refine"]
            assert refine["inversion"]["seconds"] > 0 and "structure" in refine["loss_terms"]
            assert refine["vs_default"]["inversion"] > 0 and "speedup" not in refine
            assert "`refine`: the image was inverted first" in report and "- refine: " in report
        if "compose-saved" in rows:  # two saved subjects (the others measure one), against default's iteration
            composed = rows["compose-saved"]
            assert composed["subjects"] == 2 and all(r["subjects"] == 1 for r in rows.values() if r is not composed)
            assert composed["composition"]["vs_lora_image"]["denoiser_passes"] == 3.0
            assert composed["vs_default"]["seconds_per_iteration"] > 0 and "speedup" not in composed
            assert "- compose-saved (2 subjects): the image " in report
    assert "gpu.sh: reports in" in proc.stdout
