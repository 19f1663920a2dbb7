"""`siso.app.library`: Save as keeps a session's subject in the library, and the Generate tab draws saved subjects,
one alone or several side by side, on the app's shared models (which carry no subject after)."""

import json

import pytest
from PIL import Image

from siso.app.library import subject_boxes
from siso.app.studio import UploadError
from siso.compose import Box, default_slots
from siso.library import Library, LibraryError

from ..test_library import make_subject

PROMPT = "a photo of a dog"


@pytest.fixture(scope="module")
def library(studio, tmp_path_factory):
    """The studio's library, in a folder of this module's own."""
    studio.settings.library = tmp_path_factory.mktemp("app-library")
    yield Library(studio.settings.library)
    studio.settings.library = None


@pytest.fixture(scope="module")
def learned(studio, library, subject_path) -> str:
    """A session that learned a subject (2 iterations) and saved it as ``dog``."""
    progress = list(studio.learn("learned", subject_path, PROMPT, max_iters=2))
    assert not progress[-1].running
    studio.save_subject("learned", "dog")
    return "learned"


def pixels(path: str) -> bytes:
    return Image.open(path).tobytes()


def bare(studio) -> bool:
    """The backbone carries no adapter (LoRA) and no IP-Adapter."""
    return not getattr(studio.backbone.denoiser, "peft_config", None) and studio.backbone.ip_adapter is None


def test_save_as_keeps_the_session_subject_and_refuses_in_one_line(studio, library, learned):
    (run,) = (studio.root / learned).glob("learn-*")
    assert library.names() == ["dog"] == studio.saved_names()
    assert (library.root / "dog" / "pytorch_lora_weights.safetensors").read_bytes() == (
        run / "lora" / "pytorch_lora_weights.safetensors"
    ).read_bytes()
    with pytest.raises(UploadError, match="already has a subject named dog; tick Overwrite"):
        studio.save_subject(learned, "dog")
    line = studio.save_subject(learned, " dog ", overwrite=True)  # the name as typed, trimmed
    assert line == f"Saved the subject of {run.name} as **dog**: choose it on the Generate tab."
    with pytest.raises(LibraryError, match="'a/b' is not a plain file name: it holds a path separator"):
        studio.save_subject(learned, "a/b")
    with pytest.raises(UploadError, match="nothing to save yet: learn a subject"):
        studio.save_subject("newcomer", "cat")
    assert library.names() == ["dog"]


def test_one_saved_subject_draws_what_the_session_subject_draws(studio, learned):
    own = studio.generate(learned, "a dog\n" + PROMPT, steps=1, seed=3)
    drawn = studio.draw_saved("visitor", ["dog"], "a dog\n" + PROMPT, steps=1, seed=3)
    assert [pixels(p) for p in drawn] == [pixels(p) for p in own]
    (run,) = (studio.root / "visitor").glob("reuse-*")
    assert json.loads((run / "config.json").read_text())["lora"] == str(studio.library.root / "dog")
    assert all(str(run) in p for p in drawn) and bare(studio)


def test_several_saved_subjects_side_by_side_then_the_backbone_is_bare(studio, library, learned):
    studio.save_subject(learned, "pup")
    (image,) = studio.draw_saved("composer", ["dog", "pup"], "a dog next to a dog", steps=1)
    side = studio.backbone.resolution
    assert Image.open(image).size == (side, side) and bare(studio)
    (run,) = (studio.root / "composer").glob("compose-*")
    subjects = json.loads((run / "config.json").read_text())["subjects"]
    slots = [str(box) for box in default_slots(2)]
    assert [(s["name"], s["box"]) for s in subjects] == [("dog", slots[0]), ("pup", slots[1])]
    # The composition, saved, is drawn alone with its recorded boxes: the same image.
    library.save(run / "lora", "pair")
    (again,) = studio.draw_saved("composer", ["pair"], "a dog next to a dog", steps=1)
    assert pixels(again) == pixels(image) and bare(studio)


def test_boxes_one_per_subject_as_typed_or_side_by_side():
    assert subject_boxes(" 0,0,0.5,1\n\n0.5,0,1,1\n", 2) == [Box(0, 0, 0.5, 1), Box(0.5, 0, 1, 1)]
    assert subject_boxes("", 3) == default_slots(3) and subject_boxes(" ", 1) is None
    assert subject_boxes("0,0,100,100", 1) == [Box(0, 0, 100, 100)]  # pixels


@pytest.mark.parametrize(
    ("names", "boxes", "message"),
    [
        ([], "", "choose a saved subject"),
        (["dgo"], "", r"'dgo' is neither a subject folder nor a subject in the subject library .* \(nearest: dog"),
        (["flux-dog"], "", "was learned on flux-schnell .Flux family.; .* is of the SD family"),
        (["dog", "dog"], "0,0,1,1", r"give one box per chosen subject \(2\)"),
        (["dog"], "0,0,1", "box '0,0,1' is not 4 numbers"),
        (["pair", "dog"], "", "pair is a composition of saved subjects: draw it alone"),
        (["pair"], "0,0,1,1", "pair is a composition: its subjects' boxes are recorded"),
    ],
)
def test_bad_choices_are_refused_in_one_line_before_any_run(studio, library, learned, tmp_path, names, boxes, message):
    if "flux-dog" in names and "flux-dog" not in library.names():
        library.save(make_subject(tmp_path / "flux" / "lora", [], model="flux-schnell"), "flux-dog")
    if "pair" in names and "pair" not in library.names():
        library.save(make_subject(tmp_path / "pair", [], model=studio.settings.model, composed=[]), "pair")
    studio._unload()  # bare whatever ran before (a learn leaves its subject on the backbone)
    with pytest.raises(ValueError, match=message):
        studio.draw_saved("refused", names, PROMPT, steps=1, boxes=boxes)
    assert not (studio.root / "refused").exists() and bare(studio)
