"""`siso.runs.spec.RunSpec`: what a run needs is checked when it is described, and ``dtype="auto"`` is resolved
there, once."""

import numpy as np
import pytest

from siso.compose import Box, Subject
from siso.config import EditConfig, SisoConfig
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob, GenerationJob
from siso.runs.run import run
from siso.runs.spec import RunSpec

JOB = GenerationJob(["a dog"], [0])


def test_a_run_says_what_it_needs(subject, tmp_path):
    out = RunFolder(tmp_path / "run")
    with pytest.raises(ValueError, match="kind is one of learn, edit, refine, reuse, compose, got 'paint'"):
        RunSpec("paint", SisoConfig(), out, [Subject(subject)])
    with pytest.raises(ValueError, match="at least one subject"):
        RunSpec("learn", SisoConfig(), out)
    with pytest.raises(ValueError, match="saved subject"):
        RunSpec("reuse", SisoConfig(), out, job=JOB)
    with pytest.raises(ValueError, match="saved subject"):
        RunSpec("reuse", SisoConfig(), out, [Subject(subject)], JOB, lora=tmp_path)
    with pytest.raises(ValueError, match="EditJob and an EditConfig"):
        RunSpec("edit", SisoConfig(), out, [Subject(subject)], EditJob(subject))
    with pytest.raises(ValueError, match="GenerationJob"):
        RunSpec("learn", SisoConfig(), out, [Subject(subject)], EditJob(subject))
    assert not (tmp_path / "run").exists()  # nothing is written by describing a run


def test_dtype_auto_is_resolved_once_when_described(subject, tmp_path):
    spec = RunSpec("learn", SisoConfig(device="cpu"), RunFolder(tmp_path / "run"), [Subject(subject)], JOB)
    assert spec.config.dtype == "fp32"  # what the run loads and config.json records
    given = RunSpec("learn", SisoConfig(device="cpu", dtype="bf16"), RunFolder(tmp_path / "b"), [Subject(subject)])
    assert given.config.dtype == "bf16"


def test_which_runs_compose_their_subjects(subject, tmp_path):
    out = RunFolder(tmp_path / "run")
    one, boxed = Subject(subject), Subject(subject, box=Box.parse("0,0,0.5,1"))
    assert not RunSpec("learn", SisoConfig(), out, [one]).composed
    assert RunSpec("learn", SisoConfig(), out, [boxed]).composed
    assert RunSpec("learn", SisoConfig(), out, [one, one]).composed
    region = np.ones((subject.height, subject.width), dtype=bool)
    placed = Subject(subject, region=region)
    # An edit of one subject uses the job's mask; its region stands for the mask only when the job has none.
    assert not RunSpec("edit", EditConfig(), out, [placed], EditJob(subject, region, "box")).composed
    assert RunSpec("edit", EditConfig(), out, [placed], EditJob(subject)).composed
    assert not RunSpec("edit", EditConfig(), out, [one], EditJob(subject)).composed


def test_a_spec_without_a_folder_is_described_but_not_run(subject):
    spec = RunSpec("learn", SisoConfig(), None, [Subject(subject)])  # what `siso bench` measures
    with pytest.raises(ValueError, match="give the RunSpec an out"):
        run(spec)
