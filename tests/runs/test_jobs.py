"""`siso.runs.jobs`: an edit job whose object is not detected fails before anything is written, naming the
alternatives."""

import pytest

from siso.compose import Subject
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob
from siso.runs.run import run
from siso.runs.spec import RunSpec
from siso.vision.masks import MaskError

from ..editing.helpers import _edit_config


def test_nothing_detected_names_the_alternatives(subject, scene_photo, model_dirs, detection_dirs, tmp_path):
    detector, segmenter = detection_dirs
    job = EditJob(scene_photo, object_name="dog", subject_class="dog", detector=str(detector), box_threshold=1.0)
    job.segmenter = str(segmenter)  # a random tiny detector scores boxes below 1: nothing passes
    with pytest.raises(MaskError, match=r"no 'dog' was detected.*--object NAME.*--box x0,y0,x1,y1 or --mask PNG"):
        run(RunSpec("edit", _edit_config(model_dirs), RunFolder(tmp_path / "run"), [Subject(subject)], job))
    assert not (tmp_path / "run").exists()  # failed before anything was written
