"""Personalizing a caller's stock pipeline: it draws the learned subject and is otherwise as it was (requires_grad,
attention processors, scheduler, progress bar, checkpointing, its own LoRA still active at its weight, model CPU
offload); the saved subject loads onto a fresh stock pipeline with `use_subject` (an IP-Adapter's too); bad input is
refused in one line."""

import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.hooks import CpuOffload
from diffusers import (
    FluxPipeline,
    SanaPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from tiny import make_ip_adapter

from siso.backbones import load_backbone
from siso.config import IPAdapterSettings, LoraSettings, SimilaritySettings
from siso.library import Library, LibraryError
from siso.lora import LoraError, add_lora, read_subject_info, save_lora
from siso.losses.networks import LossNetworks
from siso.personalization import personalize, use_subject
from siso.pipelines import components, pipeline_family

PROMPT = "a photo of a dog"
PIPELINES = {
    "sd": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "flux": FluxPipeline,
    "sana": SanaPipeline,
}
STYLE_TARGETS = {"sd": ["to_k"], "sdxl": ["to_k"], "flux": ["attn.to_k"], "sana": ["to_k"]}  # shared with the subject
STYLE_WEIGHT = 0.5
# A short run that improves (lr 1e-2, every iteration counts), over 2 denoising steps; checkpointing on, to see it off.
SETTINGS = {
    "resolution": 32,  # (the tiny FLUX pipeline's own size is 256 px)
    "optim": {
        "max_iters": 3,
        "lr": 1e-2,
        "num_inference_steps": 2,
        "grad_steps": 1,
        "patience": 3,
        "min_improvement": 0,
    },
    "memory": {"gradient_checkpointing": True},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)


@pytest.fixture(scope="module")
def networks(model_dirs) -> LossNetworks:
    settings = SimilaritySettings(
        dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]), dino_resolution=28
    )
    return LossNetworks(settings, "cpu", torch.float32)


@pytest.fixture(scope="module")
def styles(model_dirs, tmp_path_factory) -> dict[str, Path]:
    """Per family, a random tiny LoRA ("the caller's style") saved as diffusers saves one."""
    folders = {}
    for family, pipeline in PIPELINES.items():
        pipe = pipeline.from_pretrained(model_dirs[family])
        name = pipeline_family(pipe).denoiser_name
        torch.manual_seed(0)
        config = LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=STYLE_TARGETS[family])
        getattr(pipe, name).add_adapter(config, adapter_name="style")
        state = get_peft_model_state_dict(getattr(pipe, name), adapter_name="style")
        folders[family] = tmp_path_factory.mktemp(f"style-{family}")
        pipeline.save_lora_weights(folders[family], **{f"{name}_lora_layers": convert_state_dict_to_diffusers(state)})
    return folders


def styled(family: str, model_dirs, styles):
    """The caller's pipeline: stock, with its style LoRA active at `STYLE_WEIGHT`."""
    pipe = PIPELINES[family].from_pretrained(model_dirs[family])
    pipe.load_lora_weights(styles[family], adapter_name="style")
    pipe.set_adapters(["style"], [STYLE_WEIGHT])
    return pipe


def draw(pipe, personalized):
    generator = torch.Generator().manual_seed(personalized.seed)
    return np.asarray(pipe(PROMPT, generator=generator, **personalized.call_kwargs).images[0], dtype=int)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def snapshot(pipe) -> dict:
    """What `personalize` must leave as it was (with the parameters themselves, whose names peft's wrapping changes)."""
    denoiser = getattr(pipe, pipeline_family(pipe).denoiser_name)
    modules = components(pipe)
    layers = [layer for layer in denoiser.modules() if isinstance(layer, BaseTunerLayer)]
    return {
        "flags": [(p, p.requires_grad) for m in modules.values() for p in m.parameters()],
        "processors": {name: id(processor) for name, processor in denoiser.attn_processors.items()},
        "scheduler": pipe.scheduler,
        "scheduler_state": {k: v.clone() if torch.is_tensor(v) else v for k, v in vars(pipe.scheduler).items()},
        "bar": dict(pipe.__dict__.get("_progress_bar_config", {"absent": True})),
        "checkpointing": [denoiser.is_gradient_checkpointing, pipe.vae.is_gradient_checkpointing],
        "adapters": pipe.get_list_adapters(),
        "active": pipe.get_active_adapters(),
        "scales": {id(layer): dict(layer.scaling) for layer in layers},
        "style": {n: p.detach().clone() for n, p in denoiser.named_parameters() if ".style." in n},
    }


def assert_as_before(pipe, before: dict, added: str | None, after: dict | None = None) -> None:
    """``pipe`` (or its ``after`` snapshot) is as ``before``, with the adapter ``added`` loaded and active."""
    after = after or snapshot(pipe)
    new = {id(p) for p, _ in after["flags"]} - {id(p) for p, _ in before["flags"]}
    assert all(p.requires_grad == flag for p, flag in before["flags"])
    assert all(p.requires_grad for p, _ in after["flags"] if id(p) in new)  # as a stock load_lora_weights leaves them
    assert all(p.grad is None for p, _ in after["flags"])
    assert after["processors"] == before["processors"]
    assert after["scheduler"] is before["scheduler"] and same(after["scheduler_state"], before["scheduler_state"])
    assert after["bar"] == before["bar"] and after["checkpointing"] == before["checkpointing"]
    name = pipeline_family(pipe).denoiser_name
    expected = {k: [*v, added] if k == name and added else v for k, v in before["adapters"].items()}
    assert after["adapters"] == expected
    assert after["active"] == [*before["active"], *([added] if added else [])]
    assert {i: {k: after["scales"][i][k] for k in old} for i, old in before["scales"].items()} == before["scales"]
    assert same(after["style"], before["style"])  # the caller's adapter did not learn


@pytest.fixture(scope="module", params=list(PIPELINES))
def learned(request, model_dirs, styles, networks, subject):
    family = request.param
    pipe = styled(family, model_dirs, styles)
    pipe.set_progress_bar_config(disable=True, desc="the caller's")
    pipe.scheduler.set_timesteps(3)  # a scheduler in some state of the caller's
    before = snapshot(pipe)
    frames = {}

    def keep(iteration, image, terms):
        frames[iteration] = image

    result = personalize(pipe, subject, PROMPT, networks=networks, progress=False, callback=keep, **SETTINGS)
    after = snapshot(pipe)  # before any test calls the pipeline (a call sets the scheduler's timesteps)
    return types.SimpleNamespace(family=family, pipe=pipe, result=result, before=before, after=after, frames=frames)


def test_the_pipeline_draws_the_subject(learned, model_dirs, styles):
    result = learned.result
    assert result.adapter_name == "subject" and result.result.best_iteration > 0  # a non-trivial adapter
    # The learning ran siso's speed levers (fused upsampling, channels-last VAE): float rounding at most.
    assert np.abs(draw(learned.pipe, result) - np.asarray(result.best_image, dtype=int)).max() <= 1
    # It learned on top of the caller's style: its first image (the new adapter still zero) is the styled pipeline's.
    styled_only = draw(styled(learned.family, model_dirs, styles), result)
    assert np.abs(styled_only - np.asarray(learned.frames[0], dtype=int)).max() <= 1
    assert not np.array_equal(styled_only, np.asarray(result.best_image, dtype=int))


def test_the_pipeline_is_otherwise_as_it_was(learned):
    assert_as_before(learned.pipe, learned.before, added="subject", after=learned.after)


def test_saved_subject_draws_the_same_on_a_fresh_pipeline(learned, model_dirs, styles, tmp_path):
    folder = learned.result.save(tmp_path / "my-dog")
    assert read_subject_info(folder) == {
        "resolution": 32,
        "model": str(model_dirs[learned.family]),
        "train_prompt": PROMPT,
        "photos": [None],
        "adapter_name": "subject",
    }
    fresh = styled(learned.family, model_dirs, styles)
    loaded = use_subject(fresh, folder)
    assert (loaded.adapter_name, loaded.call_kwargs) == ("subject", {})
    assert fresh.get_active_adapters() == ["style", "subject"]
    assert np.abs(draw(fresh, learned.result) - np.asarray(learned.result.best_image, dtype=int)).max() <= 1


@pytest.mark.parametrize("learned", ["sd"], indirect=True)
def test_model_cpu_offload_is_given_back_as_it_was(learned, model_dirs, styles, networks, subject):
    pipe = styled("sd", model_dirs, styles)
    pipe.enable_model_cpu_offload(device="cpu")  # the CPU as the "accelerator": the hooks are real
    before = snapshot(pipe)
    result = personalize(pipe, subject, PROMPT, networks=networks, progress=False, **SETTINGS)
    assert all(isinstance(m._hf_hook, CpuOffload) for m in components(pipe).values())
    assert pipe._offload_device == torch.device("cpu:0") and len(pipe._all_hooks) == len(components(pipe))
    assert_as_before(pipe, before, added="subject")
    # Learned as without the offload, up to float rounding (weights moved between devices sit at other addresses,
    # and a CPU's matrix products sum in an order that depends on the operands' alignment).
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in learned.result.history], rel=1e-4)
    assert np.abs(draw(pipe, result) - np.asarray(result.best_image, dtype=int)).max() <= 1


def test_a_failed_run_gives_the_pipeline_back(model_dirs, styles, networks, subject):
    pipe = styled("sd", model_dirs, styles)
    before = snapshot(pipe)

    def stop(iteration, image, terms):
        raise RuntimeError("the caller's callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        personalize(pipe, subject, PROMPT, networks=networks, progress=False, callback=stop, **SETTINGS)
    assert_as_before(pipe, before, added=None)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"dtype": "fp16"}, ValueError, "takes no dtype setting"),
        ({"device": "cuda"}, ValueError, "takes no device setting"),
        ({"memory": {"quantize": "int8"}}, ValueError, "takes no memory.quantize"),
        ({"ip_adapter": {"model": "h94/IP-Adapter"}}, ValueError, "takes no ip_adapter"),
        ({"accel": {"compile": True}}, ValueError, "takes no accel.compile"),
        ({"optim": {"max_iters": 0}}, ValueError, "max_iters must be >= 1"),
        ({"colour": "red"}, TypeError, "no field colour"),
        ({"adapter_name": "style"}, ValueError, "has an adapter 'style'"),
        ({"adapter_name": "my.dog"}, ValueError, "without '.'"),
    ],
)
def test_bad_settings_are_refused_in_one_line(model_dirs, styles, networks, subject, settings, error, message):
    pipe = styled("sd", model_dirs, styles)
    before = snapshot(pipe)
    with pytest.raises(error, match=re.escape(message)) as refused:
        personalize(pipe, subject, PROMPT, networks=networks, progress=False, **settings)
    assert "\n" not in str(refused.value)
    assert_as_before(pipe, before, added=None)


def test_unsupported_pipelines_and_offload_are_refused_in_one_line(model_dirs, networks, subject):
    pipe = StableDiffusionPipeline.from_pretrained(model_dirs["sd"])
    with pytest.raises(ValueError, match="a StableDiffusionImg2ImgPipeline cannot be personalized") as refused:
        personalize(StableDiffusionImg2ImgPipeline(**pipe.components), subject, PROMPT, networks=networks)
    assert "\n" not in str(refused.value)
    pipe.enable_sequential_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="sequential and group offload are not supported") as refused:
        personalize(pipe, subject, PROMPT, networks=networks, progress=False)
    assert "\n" not in str(refused.value)
    assert not pipe.get_list_adapters()


@pytest.mark.parametrize("learned", ["sd"], indirect=True)
def test_a_subject_of_another_family_is_refused_in_one_line(learned, model_dirs, tmp_path):
    folder = learned.result.save(tmp_path / "my-dog")
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dirs["sdxl"])
    with pytest.raises(LoraError, match="learned on .*StableDiffusionPipeline.*StableDiffusionXLPipeline") as refused:
        use_subject(pipe, folder)
    assert "\n" not in str(refused.value)
    assert not pipe.get_list_adapters()
    with pytest.raises(LibraryError, match="'missing' is neither a subject folder nor"):
        use_subject(pipe, "missing")
    # A name in the subject library (tests/conftest.py points it at a temporary folder) loads as its folder does.
    Library().save(folder, "my-dog")
    loaded = use_subject(StableDiffusionPipeline.from_pretrained(model_dirs["sd"]), "my-dog")
    assert loaded.folder == Library().root / "my-dog" and loaded.adapter_name


def test_an_ip_adapter_subject_brings_its_adapter(model_dirs, subject, tmp_path):
    ip_adapter = make_ip_adapter(
        tmp_path / "ip-adapter", UNet2DConditionModel.from_pretrained(model_dirs["sdxl"] / "unet")
    )
    backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
    backbone.load_ip_adapter(IPAdapterSettings(str(ip_adapter)), [subject])
    add_lora(backbone, LoraSettings())
    torch.manual_seed(0)
    with torch.no_grad():  # a LoRA that changes the image
        for name, p in backbone.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    folder = save_lora(backbone, tmp_path / "subject", model=str(model_dirs["sdxl"]))
    call = {"num_inference_steps": 2, "guidance_scale": 0.0}

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dirs["sdxl"])
    loaded = use_subject(pipe, folder, adapter_name="dog")
    assert list(loaded.call_kwargs) == ["ip_adapter_image"] and pipe.get_active_adapters() == ["dog"]
    ours = pipe(PROMPT, generator=torch.Generator().manual_seed(1), **call, **loaded.call_kwargs).images[0]

    stock = StableDiffusionXLPipeline.from_pretrained(model_dirs["sdxl"])  # as diffusers' docs load them
    stock.load_ip_adapter(str(ip_adapter), subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors")
    stock.set_ip_adapter_scale(0.5)
    stock.load_lora_weights(folder)
    expected = stock(PROMPT, generator=torch.Generator().manual_seed(1), ip_adapter_image=[[subject]], **call).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(expected))


def test_the_docs_example_runs(model_dirs, subject, tmp_path, monkeypatch):
    """docs/personalize.md's example, on the tiny SD-Turbo and tiny default similarity networks."""
    text = (Path(__file__).parent.parent / "docs" / "personalize.md").read_text()
    code = re.search(r"<!-- run by tests/test_personalization.py -->\n```python\n(.*?)```", text, re.DOTALL)[1]
    similarity = SimilaritySettings()
    for hub_id, tiny in ((similarity.dino_model, "dino"), (similarity.ir_model, "clip")):
        (tmp_path / hub_id).parent.mkdir(parents=True)
        (tmp_path / hub_id).symlink_to(model_dirs[tiny], target_is_directory=True)
    subject.save(tmp_path / "my_dog.jpg")
    monkeypatch.chdir(tmp_path)
    code = code.replace('"stabilityai/sd-turbo"', repr(str(model_dirs["sd"]))).replace('"cuda"', '"cpu"')
    exec(compile(code, "<docs/personalize.md>", "exec"), {"__name__": "__docs__"})
