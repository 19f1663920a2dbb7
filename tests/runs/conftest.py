"""Run fixtures shared with tests/editing: the scene photo and the tiny detector and segmenter."""

from ..editing.conftest import detection_dirs, scene_photo  # noqa: F401
