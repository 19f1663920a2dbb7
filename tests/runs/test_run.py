"""`siso.runs.run.run`: a learning run writes its whole run folder, from which it can be reproduced."""

import json

import numpy as np
import pytest
from PIL import Image

from siso.compose import Subject
from siso.config import SisoConfig
from siso.runs.folder import RunFolder
from siso.runs.jobs import GenerationJob
from siso.runs.models import Models
from siso.runs.run import run
from siso.runs.spec import RunSpec


def test_a_learn_run_writes_its_run_folder(make_config, subject, subject_path, tmp_path):
    config = make_config("sd", max_iters=2)
    job = GenerationJob(prompts=["a dog on the beach"], seeds=[3])
    out = tmp_path / "run"
    spec = RunSpec("learn", config, RunFolder(out), [Subject(subject, path=str(subject_path))], job, command=["t"])
    models, seen = Models(), []
    metrics = run(spec, models, progress=False, callback=lambda i, image, terms: seen.append(i))
    assert seen == [0, 1]
    for name in ("best.png", "iterations.png", "loss.png", "lora/pytorch_lora_weights.safetensors"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "iterations").iterdir()) == ["0000.png", "0001.png"]
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["stop_reason"] == "max_iters" and len(metrics["iterations"]) == 2
    assert {"load_seconds", "optimize_seconds", "generate_seconds"} <= set(metrics["timings"])
    written = json.loads((out / "config.json").read_text())
    assert (written["command"], written["subject"]) == (["t"], str(subject_path))
    assert written["job"] == {"prompts": ["a dog on the beach"], "seeds": [3], "num_inference_steps": 1,
                              "guidance_scale": 0.0}  # fmt: skip
    assert SisoConfig.from_dict(written["siso"]) == spec.config  # the settings that reproduce the run
    assert set(written["versions"]) == {"siso", "torch", "diffusers", "transformers", "peft"}
    # The job's image is drawn with the learned subject, which the models' backbone still carries.
    [image] = metrics["images"]
    assert (image["prompt"], image["seed"]) == ("a dog on the beach", 3)
    drawn = models.loaded.generate("a dog on the beach", 3, 1)
    assert np.array_equal(np.asarray(Image.open(out / image["file"])), np.asarray(drawn))

    # A saved subject learned at another side is refused on models that draw at this one (not drawn at the wrong one).
    info = json.loads((out / "lora" / "siso_subject.json").read_text())
    (out / "lora" / "siso_subject.json").write_text(json.dumps({**info, "resolution": models.loaded.resolution * 2}))
    models.loaded.pipe.unload_lora_weights()
    again = RunSpec("reuse", config, RunFolder(tmp_path / "again"), job=job, lora=out / "lora")
    with pytest.raises(ValueError, match=f"was learned at {models.loaded.resolution * 2} px; these models draw at"):
        run(again, models, progress=False)
    assert not (tmp_path / "again").exists()
