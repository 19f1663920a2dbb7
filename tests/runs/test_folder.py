"""A generation job and an output folder refuse bad values before any work starts."""

import math
import os

import pytest

from siso.runs.folder import OutputExistsError, RunFolder, check_output_folder
from siso.runs.jobs import GenerationJob


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": [" "]}, "non-empty prompt"),
        ({"seeds": []}, "at least one seed"),
        ({"seeds": [0, 2**64]}, "every seed must be between"),
        ({"num_inference_steps": 0}, "num_inference_steps must be >= 1"),
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number >= 0, got nan"),
        ({"guidance_scale": math.inf}, "guidance_scale must be a finite number >= 0, got inf"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
    ],
)
def test_generation_job_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationJob(**{"prompts": ["a dog"], "seeds": [0], **kwargs})


def test_output_folder_checks(tmp_path):
    check_output_folder(tmp_path / "new" / "deeper")  # created later, at the first write
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="exists and is not a folder"):
        RunFolder(tmp_path / "file")
    with pytest.raises(ValueError, match=f"{tmp_path / 'file'} is a file"):
        RunFolder(tmp_path / "file" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_folder_must_be_writable(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable"):
        check_output_folder(tmp_path / "locked" / "run")


def test_frames_are_written_in_the_background_and_waited_for(tmp_path, monkeypatch):
    import threading

    from PIL import Image

    writers = set()
    save = Image.Image.save

    def recording_save(image, *args, **kwargs):
        writers.add(threading.current_thread().name)
        return save(image, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", recording_save)
    out = RunFolder(tmp_path / "run")
    out.write_json("config.json", {})
    for i in range(5):
        out.save_iteration(i, Image.new("RGB", (8, 8), (i, 0, 0)))
    out.wait_for_frames()
    frames = sorted(p.name for p in (tmp_path / "run" / "iterations").iterdir())
    assert frames == [f"{i:04d}.png" for i in range(5)]  # all written, none left half-written (".partial")
    assert writers and all(name.startswith("siso-frames") for name in writers)  # off the optimizing thread
    assert Image.open(tmp_path / "run" / "iterations" / "0003.png").getpixel((0, 0)) == (3, 0, 0)
