"""A zero-shot start from an IP-Adapter: the adapter is active in the grad-enabled sampler and matches the stock
SDXL pipeline's ``ip_adapter_image``, only the LoRA learns, and a saved subject brings its adapter and image back."""

import json
import zipfile

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from peft.utils import get_peft_model_state_dict
from PIL import Image, ImageOps
from tiny import make_ip_adapter

from siso.app.studio import AppSettings, Studio
from siso.backbones import load_backbone
from siso.compose import Subject
from siso.config import IPAdapterSettings, LoraSettings, SisoConfig
from siso.images import tensor_to_pil
from siso.lora import LoraError, add_lora, check_lora_file, read_subject_info, save_lora, saved_ip_adapter
from siso.optimize import optimize_subject
from siso.runs.folder import RunFolder
from siso.runs.jobs import GenerationJob
from siso.runs.run import run
from siso.runs.spec import RunSpec

PROMPT = "a photo of a dog"
WEIGHT = "sdxl_models/ip-adapter_sdxl.safetensors"


@pytest.fixture(scope="module")
def ip_adapter_dir(model_dirs, tmp_path_factory):
    unet = UNet2DConditionModel.from_pretrained(model_dirs["sdxl"] / "unet")
    return make_ip_adapter(tmp_path_factory.mktemp("ip-adapter"), unet)


def stock_pipeline(model_dirs, ip_adapter_dir, scale=0.5, lora_dir=None) -> StableDiffusionXLPipeline:
    """The stock SDXL pipeline with the adapter (and a saved LoRA) loaded as diffusers' docs load them."""
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dirs["sdxl"])
    subfolder, _, weight_name = WEIGHT.rpartition("/")
    pipe.load_ip_adapter(str(ip_adapter_dir), subfolder=subfolder, weight_name=weight_name)
    pipe.set_ip_adapter_scale(scale)
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_with_adapter(model_dirs, ip_adapter_dir, photos, scale=0.5):
    backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
    backbone.load_ip_adapter(IPAdapterSettings(str(ip_adapter_dir), scale=scale), photos)
    return backbone


@pytest.mark.parametrize(("photos", "guidance"), [(1, 0.0), (1, 3.0), (2, 0.0)])
def test_sampler_with_identity_lora_matches_stock_ip_adapter_pipeline(
    model_dirs, ip_adapter_dir, subject, photos, guidance
):
    images = [subject, ImageOps.mirror(subject)][:photos]
    backbone = sdxl_with_adapter(model_dirs, ip_adapter_dir, images)
    add_lora(backbone, LoraSettings())  # zero-initialised B: the model is unchanged
    cond = backbone.encode_prompt(PROMPT, guidance)
    ours = backbone.sample(cond, torch.Generator().manual_seed(7), 2, grad_steps=2, guidance_scale=guidance)

    stock = stock_pipeline(model_dirs, ip_adapter_dir)
    call = {"num_inference_steps": 2, "guidance_scale": guidance, "ip_adapter_image": [images]}
    expected = stock(PROMPT, output_type="pt", generator=torch.Generator().manual_seed(7), **call).images
    torch.testing.assert_close(ours.detach(), expected, atol=1e-5, rtol=0)
    # `generate` (the final images) passes the same embeddings to the stock call.
    ours_pil = backbone.generate(PROMPT, seed=3, num_inference_steps=2, guidance_scale=guidance)
    expected_pil = stock(PROMPT, generator=torch.Generator().manual_seed(3), **call).images[0]
    assert np.array_equal(np.asarray(ours_pil), np.asarray(expected_pil))


def test_adapter_is_active_and_only_lora_gets_gradients(model_dirs, ip_adapter_dir, subject):
    backbone = sdxl_with_adapter(model_dirs, ip_adapter_dir, [subject])
    modules = add_lora(backbone, LoraSettings())
    unet = backbone.denoiser
    adapter_params = {n: p for n, p in unet.named_parameters() if "_ip." in n or n.startswith("encoder_hid_proj")}
    assert adapter_params and not any(p.requires_grad for p in adapter_params.values())
    assert not any("lora" in n for n in adapter_params)  # peft's to_k/to_v targets did not catch to_k_ip/to_v_ip
    assert all("lora" in n for n in get_peft_model_state_dict(unet))  # and the saved state holds LoRA only

    def render():
        return backbone.sample(backbone.encode_prompt(PROMPT), torch.Generator().manual_seed(0), 1, grad_steps=1)

    image = render()
    image.mean().backward()
    with_grad = {n for n, p in unet.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    assert any(p.grad.abs().sum() > 0 for n, p in unet.named_parameters() if ".lora_B." in n)
    assert set(modules) == {"unet"}

    backbone.pipe.set_ip_adapter_scale(0.0)
    without = render()
    assert (image - without).abs().max() > 1e-4  # the adapter changes the image the loop optimizes


def test_saved_subject_reproduces_with_stock_pipeline_and_reuse(
    model_dirs, ip_adapter_dir, subject, make_config, tmp_path
):
    config = make_config("sdxl", max_iters=4, patience=4, min_improvement=0.0)
    config.ip_adapter = IPAdapterSettings(str(ip_adapter_dir))
    job = GenerationJob(prompts=["a dog on the beach"], seeds=[5], num_inference_steps=2)
    metrics = run(RunSpec("learn", config, RunFolder(tmp_path / "run"), [Subject(subject)], job), progress=False)
    assert metrics["best_iteration"] > 0  # a non-trivial LoRA is what gets saved
    lora_dir = tmp_path / "run" / "lora"
    ours = Image.open(tmp_path / "run" / metrics["images"][0]["file"])

    info = read_subject_info(lora_dir)
    assert info["ip_adapter"] == {
        "model": str(ip_adapter_dir),
        "weight_name": WEIGHT,
        "scale": 0.5,
        "images": ["ip_adapter_image.png"],
    }
    assert all("lora" in key for key in check_lora_file(lora_dir))  # the adapter's own weights are not saved

    photo = Image.open(lora_dir / "ip_adapter_image.png")
    assert np.array_equal(np.asarray(photo), np.asarray(subject.convert("RGB")))  # lossless
    call = {"num_inference_steps": 2, "guidance_scale": 0.0, "ip_adapter_image": photo}
    plain = stock_pipeline(model_dirs, ip_adapter_dir)
    loaded = stock_pipeline(model_dirs, ip_adapter_dir, lora_dir=lora_dir)
    plain, loaded = (
        pixels(pipe("a dog on the beach", generator=torch.Generator().manual_seed(5), **call).images[0])
        for pipe in (plain, loaded)
    )
    assert np.abs(plain - pixels(ours)).max() > 8  # the LoRA moved ...
    # ... and a stock pipeline reproduces the image, up to one level of float rounding: siso aligns the weights it
    # loads (`siso.devices.own_cpu_memory`), a stock pipeline keeps safetensors' offsets, and MKL's sums differ
    assert np.abs(loaded - pixels(ours)).max() <= 1 and (loaded != pixels(ours)).mean() < 0.01

    reuse_config = SisoConfig(model=str(model_dirs["sdxl"]), device="cpu")
    reuse = run(RunSpec("reuse", reuse_config, RunFolder(tmp_path / "reuse"), job=job, lora=lora_dir), progress=False)
    again = Image.open(tmp_path / "reuse" / reuse["images"][0]["file"])
    assert np.array_equal(pixels(again), pixels(ours))  # siso generate --lora: the same image

    # The app's Generate tab, given the subject's zip, brings the adapter back too (it once drew without it) ...
    studio = Studio(AppSettings(model=str(model_dirs["sdxl"]), root=tmp_path / "app", device="cpu"))
    upload = tmp_path / "subject.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for path in lora_dir.iterdir():
            archive.write(path, f"lora/{path.name}")
    (app,) = studio.generate("visitor", "a dog on the beach", steps=2, seed=5, subject_zip=upload)
    assert np.array_equal(pixels(Image.open(app)), pixels(ours))
    # ... and takes it off with the subject: the next run starts from the bare model, as a fresh one draws it.
    studio._unload()
    assert studio.backbone.ip_adapter is None
    bare = studio.backbone.generate("a dog on the beach", 5, 2, 0.0)
    fresh = load_backbone(str(model_dirs["sdxl"]), device="cpu").generate("a dog on the beach", 5, 2, 0.0)
    assert np.array_equal(pixels(bare), pixels(fresh))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("family", ["sd", "sana"])
def test_family_without_adapter_is_refused_before_loading(
    model_dirs, ip_adapter_dir, subject, make_config, tmp_path, family
):
    config = make_config(family)
    config.ip_adapter = IPAdapterSettings(str(ip_adapter_dir))
    with pytest.raises(ValueError, match="takes no IP-Adapter; a zero-shot start works with sdxl-turbo") as err:
        run(RunSpec("learn", config, RunFolder(tmp_path / "o"), [Subject(subject)]), progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o").exists()


def test_saved_subject_keeps_every_adapter_image_and_a_missing_one_is_one_line(
    model_dirs, ip_adapter_dir, subject, tmp_path
):
    photos = [subject.convert("RGB"), ImageOps.mirror(subject).convert("RGB")]
    backbone = sdxl_with_adapter(model_dirs, ip_adapter_dir, photos)
    add_lora(backbone, LoraSettings())
    lora_dir = save_lora(backbone, tmp_path / "lora", model=str(model_dirs["sdxl"]))
    info = json.loads((lora_dir / "siso_subject.json").read_text())
    assert info["ip_adapter"]["images"] == ["ip_adapter_image.png", "ip_adapter_image_1.png"]
    settings, images = saved_ip_adapter(lora_dir)
    assert settings == IPAdapterSettings(str(ip_adapter_dir), WEIGHT, 0.5)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, photos, strict=True))
    (lora_dir / "ip_adapter_image_1.png").unlink()
    with pytest.raises(LoraError, match="the IP-Adapter's image, does not read") as err:
        saved_ip_adapter(lora_dir)
    assert "\n" not in str(err.value)


def test_optimize_subject_loads_the_adapter_of_its_config(model_dirs, ip_adapter_dir, subject, make_config):
    config = make_config("sdxl", max_iters=1)
    config.ip_adapter = IPAdapterSettings(str(ip_adapter_dir), scale=0.5)
    backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
    result = optimize_subject(backbone, [subject], config, progress=False)
    assert backbone.ip_adapter == IPAdapterSettings(str(ip_adapter_dir), WEIGHT, 0.5)
    # Iteration 0 is the adapter's zero-shot image, not the bare model's.
    same = sdxl_with_adapter(model_dirs, ip_adapter_dir, [subject])
    cond = same.encode_prompt(config.train_prompt)
    with torch.no_grad():
        start = same.sample(cond, torch.Generator().manual_seed(config.optim.seed), 1, 1)
    assert np.array_equal(np.asarray(result.best_image), np.asarray(tensor_to_pil(start)[0]))
