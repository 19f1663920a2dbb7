"""Memory options (`siso.config.MemorySettings`): text-encoder offload, gradient checkpointing, --quantize, and the
out-of-memory message; each changes what is kept in memory, and all but quantization leave the images unchanged."""

import argparse
import io
import json
import platform
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from console import run_siso
from graphs import run_losses
from PIL import Image

from siso import cli
from siso.backbones import Backbone, UNetBackbone, load_backbone
from siso.config import MemorySettings
from siso.lora import add_lora
from siso.memory import (
    PeakMemory,
    add_memory_options,
    heap_fits,
    memory_room,
    memory_settings,
    out_of_memory_message,
)
from siso.optimize import optimize_subject
from siso.quantize import check_quantize

SIZES = {"sd": None, "sdxl": None, "flux": 32, "sana": 64}
GUIDANCE = {"sd": 0.0, "sdxl": 0.0, "flux": 0.0, "sana": 4.5}


def load(model_dirs, family, **kw) -> Backbone:
    return load_backbone(str(model_dirs[family]), device="cpu", resolution=SIZES[family], **kw)


def weight_bytes(module: torch.nn.Module) -> int:
    """What the module's weights take when saved (quantized tensors count their packed data)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# --- text encoders: encoded once, then out of the device's memory -------------------------------------------------


@pytest.mark.parametrize("family", ["sd", "sana"])
def test_text_encoders_are_freed_on_cpu_and_images_are_unchanged(model_dirs, subject, make_config, family):
    images, params = {}, {}
    for offload in (False, True):
        backbone = load(model_dirs, family)
        config = make_config(family, max_iters=3, patience=3, min_improvement=0.0, guidance_scale=GUIDANCE[family])
        config.memory.offload_text_encoders = offload
        result = optimize_subject(backbone, subject, config, progress=False)
        params[offload] = sum(p.numel() for m in backbone.pipe.components.values() if isinstance(m, torch.nn.Module)
                              for p in m.parameters())  # fmt: skip
        assert (backbone.pipe.text_encoder is None) == offload  # freed once the prompt was encoded
        images[offload] = [
            np.asarray(result.best_image),
            np.asarray(backbone.generate("a dog", 1, 1, GUIDANCE[family])),
        ]
        assert backbone.pipe.text_encoder is not None  # loaded again for the new prompt
    assert params[True] < params[False]
    for kept, freed in zip(images[False], images[True], strict=True):
        assert np.array_equal(kept, freed)


def test_flux_with_clip_lora_keeps_clip_and_never_reloads_t5_while_optimizing(model_dirs, subject, make_config):
    backbone = load(model_dirs, "flux")
    loads = []
    load_component = backbone.load_component
    backbone.load_component = lambda name: loads.append(name) or load_component(name)
    config = make_config("flux", max_iters=3, patience=3, min_improvement=0.0)
    config.lora.train_text_encoder = True  # CLIP-L is encoded every iteration; T5's embedding is kept
    optimize_subject(backbone, subject, config, progress=False)
    assert backbone.pipe.text_encoder is not None and backbone.pipe.text_encoder_2 is None
    assert loads == []
    backbone.generate("a dog on the beach", 0, 1)
    assert loads == ["text_encoder_2"] and backbone.pipe.text_encoder_2 is not None


def test_text_encoders_move_to_cpu_from_an_accelerator(model_dirs, monkeypatch):
    backbone = load(model_dirs, "sdxl")
    moves = {name: [] for name in ("text_encoder", "text_encoder_2")}
    for name, log in moves.items():
        # An instance attribute shadows nn.Module.to: record the moves without an accelerator.
        object.__setattr__(getattr(backbone.pipe, name), "to", lambda device, log=log: log.append(str(device)))
    monkeypatch.setattr(Backbone, "device", property(lambda self: torch.device("cuda")))
    assert backbone.park_text_encoders(keep=["text_encoder"]) == ["text_encoder_2"]
    assert moves == {"text_encoder": [], "text_encoder_2": ["cpu"]}
    assert backbone.pipe.text_encoder_2 is not None  # moved, not freed
    backbone.ensure_text_encoders()
    assert moves == {"text_encoder": [], "text_encoder_2": ["cpu", "cuda"]}
    backbone.ensure_text_encoders()  # already back: no move
    assert moves["text_encoder_2"] == ["cpu", "cuda"]


# --- gradient checkpointing -----------------------------------------------------------------------------------------


def _saved_bytes_and_grads(backbone: Backbone, family: str) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
    """Bytes the autograd graph keeps for backward during one grad-enabled sample, the image, and the LoRA grads."""
    steps, grad_steps = (3, 2) if family == "sana" else (1, 1)
    with torch.no_grad():
        cond = backbone.encode_prompt("a photo of a dog", GUIDANCE[family])
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        image = backbone.sample(cond, torch.Generator().manual_seed(0), steps, grad_steps, GUIDANCE[family])
    image.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in backbone.denoiser.named_parameters() if p.grad is not None}
    return sum(saved.values()), image.detach(), grads


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux", "sana"])
def test_gradient_checkpointing_keeps_less_and_changes_nothing(model_dirs, make_config, family):
    results = {}
    for checkpointing in (False, True):
        backbone = load(model_dirs, family)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            add_lora(backbone, make_config(family).lora)
        with torch.no_grad():  # a non-zero LoRA, so that every LoRA matrix gets a gradient
            for name, p in backbone.denoiser.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
        if checkpointing:
            expected = ["transformer"] if family == "sana" else [backbone.denoiser_name, "vae"]
            assert backbone.enable_gradient_checkpointing() == expected  # Sana's DC-AE does not support it
        results[checkpointing] = _saved_bytes_and_grads(backbone, family)
    (plain_bytes, plain_image, plain_grads), (ckpt_bytes, ckpt_image, ckpt_grads) = results[False], results[True]
    assert ckpt_bytes < 0.8 * plain_bytes, (plain_bytes, ckpt_bytes)
    assert torch.equal(plain_image, ckpt_image)
    assert plain_grads.keys() == ckpt_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


# --- quantization -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flux", "sana"])
def test_int8_quantized_denoiser_trains_only_full_precision_lora(model_dirs, subject, make_config, family):
    from torchao.quantization import Int8Tensor

    plain = load(model_dirs, family)
    quantized = load(model_dirs, family, quantize="int8")
    linears = [m for m in quantized.denoiser.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    # int8 of fp32 is a quarter; the tiny model's biases, norms, convolutions and per-row scales leave 0.4-0.75.
    assert weight_bytes(quantized.denoiser) < 0.8 * weight_bytes(plain.denoiser)
    assert all(not isinstance(m.weight, Int8Tensor) for m in quantized.pipe.vae.modules() if hasattr(m, "weight"))

    # The base model is approximated, not replaced: the same seed gives nearly the same image.
    guidance = GUIDANCE[family]
    ours = np.asarray(quantized.generate("a dog", 0, 2, guidance), dtype=np.float32)
    reference = np.asarray(plain.generate("a dog", 0, 2, guidance), dtype=np.float32)
    assert np.abs(ours - reference).mean() < 3.0  # of 255

    config = make_config(family, max_iters=4, patience=4, min_improvement=0.0, guidance_scale=guidance)
    config.memory.quantize = "int8"  # recorded; loading applied it
    result = optimize_subject(quantized, subject, config, progress=False)
    assert len({h["loss"] for h in result.history}) == 4  # the LoRA moved the image
    lora = [p for n, p in quantized.denoiser.named_parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 and not isinstance(p, Int8Tensor) for p in lora)
    assert all("lora_" in n for n, p in quantized.denoiser.named_parameters() if p.requires_grad)


def test_quantize_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match=r"nf4 \(bitsandbytes\) runs on CUDA GPUs only; on this device use "):
        check_quantize("nf4", "cpu")
    with pytest.raises(ValueError, match="quantize must be one of int8, nf4"):
        MemorySettings(quantize="fp4")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"--quantize int8 needs torchao: pip install 'siso\[quantize\]'"):
        check_quantize("int8", "cpu")


# --- out of memory ----------------------------------------------------------------------------------------------------


def test_out_of_memory_is_one_line_naming_the_options(
    model_dirs, subject_path, similarity_args, tmp_path, monkeypatch, capsys
):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 23.55 GiB of which ..."
        )

    monkeypatch.setattr(UNetBackbone, "sample", out_of_memory)
    argv = ["generate", "--subject", str(subject_path), "--model", str(model_dirs["sd"]), "--prompt", "a dog"]
    argv += similarity_args
    code = cli.main([*argv, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_OUT_OF_MEMORY
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("siso: error: out of memory on the GPU (tried to allocate 2.50 gib); to use less, try ")
    assert "--gradient-checkpointing" in err and "--quantize" in err


def test_cpu_out_of_memory_message():
    err = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried ...")
    assert out_of_memory_message(err).startswith("out of memory on the CPU; to use less, try --gradient-checkpointing")


def test_peak_memory_sees_a_large_allocation():
    # In a fresh process: in this one, memory freed by earlier tests may be reused without the RSS growing.
    code = (
        "import json, torch\n"
        "from siso.memory import PeakMemory\n"
        "with PeakMemory('cpu') as peak:\n"
        "    block = torch.ones(64 * 2**20 // 4)\n"  # 64 MiB, touched
        "    del block\n"
        "print(json.dumps({'bytes': peak.bytes, 'peak': peak.peak, 'record': peak.record()}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 60 * 2**20 < peak["bytes"] < 80 * 2**20 and peak["peak"] >= peak["bytes"]
    assert peak["record"] == {"peak_memory_gb": peak["peak"] / 1e9, "peak_memory_kind": "process RSS"}
    with PeakMemory("meta") as nothing:  # a device it cannot measure: no figures, no error
        pass
    assert nothing.record() == {"peak_memory_gb": None, "peak_memory_kind": None}


# --- transparent huge pages for large CPU tensors (`siso.pages`) -----------------------------------------------------

# In a fresh process (PyTorch reads the setting once, at its first CPU tensor): optionally a tensor made before
# `import siso`, then a 16 MiB tensor; prints whether the kernel was advised to back its mapping with huge pages
# (the ``hg`` flag in /proc/self/smaps, whatever the system's own huge-page mode).
ADVISED = """
import sys
import torch
if sys.argv[1] == "torch first":
    torch.ones(8)
import siso
x = torch.ones(4 * 2**20)
address, flags = x.data_ptr(), None
for line in open("/proc/self/smaps"):
    fields = line.split()
    if "-" in fields[0] and len(fields[0]) > 8 and ":" not in fields[0]:
        start, end = (int(v, 16) for v in fields[0].split("-"))
        inside = start <= address < end
    elif fields[0] == "VmFlags:" and inside:
        flags = fields[1:]
print("hg" in flags)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PyTorch advises huge pages on Linux only")
@pytest.mark.parametrize(
    ("environment", "order", "advised"),
    [(None, "siso first", True), ("0", "siso first", False), (None, "torch first", False)],
)
def test_import_siso_asks_for_huge_pages_unless_told_otherwise(environment, order, advised, monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    if environment is not None:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", environment)
    proc = subprocess.run([sys.executable, "-c", ADVISED, order], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == str(advised)


def test_the_bench_reference_runs_with_the_environments_own_page_setting(monkeypatch):
    from siso import pages
    from siso.bench import CONFIGURATIONS, worker_environment

    monkeypatch.setenv(pages.ENV, "1")  # as `import siso` leaves it
    for user_setting, reference_gets in ((None, "0"), ("1", "1")):
        monkeypatch.setattr(pages, "USER_SETTING", user_setting)
        assert worker_environment(CONFIGURATIONS["reference"])[pages.ENV] == reference_gets
        assert worker_environment(CONFIGURATIONS["default"])[pages.ENV] == "1"


# --- freed memory given back to the system (glibc) -----------------------------------------------------------------

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# In a fresh process: a 30 MiB block freed (glibc's threshold for giving blocks their own mapping rises to it), then
# 100 blocks of 8 MiB with the last one kept; prints how much of the 99 freed ones left the resident set.
FREED = """
import sys
import torch
from siso.memory import _process_memory, release_freed_memory
if sys.argv[1] == "release":
    assert release_freed_memory()
torch.ones(30 * 2**18)  # made and freed
blocks = [torch.ones(2 * 2**20) for _ in range(100)]  # 8 MiB each, every page touched
before = _process_memory("VmRSS")
del blocks[:-1]
print((before - _process_memory("VmRSS")) / 2**20)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_release_freed_memory_gives_freed_tensors_back():
    given_back = {}
    for mode in ("keep", "release"):
        proc = subprocess.run([sys.executable, "-c", FREED, mode], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        given_back[mode] = float(proc.stdout)
    assert given_back["release"] > 700  # of 792 MiB freed
    assert given_back["keep"] < 100  # glibc's default keeps them in its heap: what the setting is for


# In a fresh process: a 1 MiB block freed below a block still in use (a hole in the heap), and glibc's free figure
# before and after the free.
HEAP_FREE = """
import ctypes, json
from siso.memory import _glibc, _heap_free
libc = _glibc()
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.mallopt(-3, 2**30)  # no mapping of its own for the 1 MiB block
hole, above = libc.malloc(2**20), libc.malloc(64)
before = _heap_free(libc)
libc.free(hole)
print(json.dumps({"before": before, "after": _heap_free(libc)}))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallinfo2 only")
def test_heap_free_counts_freed_blocks_inside_the_heap():
    proc = subprocess.run([sys.executable, "-c", HEAP_FREE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 2**20 <= result["after"] - result["before"] < 2**20 + 4096


# In a fresh process (glibc's settings are process-wide), a mock iteration four times outside `reuse_heap` and four
# times inside it: a decoder whose backward makes a 64 MiB tensor, then smaller ones as the VAE decoder's gradients
# (48, 32, 16 MiB, each freed before the next), then a denoiser-like phase of 8-24 MiB blocks; in the fourth, a
# similarity graph of 160 MiB in 8 MiB blocks is made and freed between the decoder's forward and its backward.
# Prints the pages faulted in by the decoder's smaller tensors and by the denoiser's phase, how much of the freed
# similarity graph stayed resident when it was freed and when the decoder's backward started, and how much exiting
# gave back. Without huge pages (`siso.pages`), so that a fault is a 4 KiB page whichever way the memory came.
HEAP = """
import json, resource
import torch
from siso.memory import _process_memory, release_freed_memory, reuse_heap
assert release_freed_memory()
MiB = 2**18  # float32 elements
figures = {"decoder": [], "denoiser": [], "similarity_kept_mib": [], "similarity_resident_mib": []}

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

class Probe(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        figures["similarity_resident_mib"].append((_process_memory("VmRSS") - rss_before_similarity) / 2**20)
        block = torch.ones(64 * MiB)  # every page touched
        del block
        before = faults()
        for mib in (48, 32, 16):  # smaller and smaller, as the VAE decoder's gradients
            block = torch.ones(mib * MiB)
            del block
        figures["decoder"].append(faults() - before)
        return grad

class Decoder(torch.nn.Module):
    def forward(self, x):
        return Probe.apply(x)

def iteration(similarity_graph):
    global rss_before_similarity
    out = decoder(x)
    rss_before_similarity = _process_memory("VmRSS")
    if similarity_graph:
        similarity = [torch.ones(8 * MiB) for _ in range(20)]
        del similarity
        figures["similarity_kept_mib"].append((_process_memory("VmRSS") - rss_before_similarity) / 2**20)
    out.sum().backward()
    before = faults()
    for mib in (24, 16, 8, 16, 24):
        torch.ones(mib * MiB)
    figures["denoiser"].append(faults() - before)

decoder, x = Decoder(), torch.zeros(4, requires_grad=True)
for similarity_graph in (False, False, False, True):
    iteration(similarity_graph)
with reuse_heap(decoder) as applied:
    with torch.no_grad():
        decoder(x)  # no graph: no backward to prepare
    for similarity_graph in (False, False, False, True):
        iteration(similarity_graph)
    inside = _process_memory("VmRSS")
figures["given_back_mib"] = (inside - _process_memory("VmRSS")) / 2**20
print(json.dumps({"applied": applied, **figures}))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_reuse_heap_reuses_freed_memory_and_gives_it_back(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    proc = subprocess.run([sys.executable, "-c", HEAP], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["applied"]
    pages = 2**20 // 4096
    decoder, denoiser = result["decoder"], result["denoiser"]
    # Outside: each tensor a fresh mapping, faulted in page by page (96 MiB; 88 MiB in the denoiser's phase).
    assert all(n >= 95 * pages for n in decoder[:4]) and all(n >= 85 * pages for n in denoiser[:4])
    # Inside: the decoder's smaller tensors reuse the 64 MiB one's memory, and the denoiser's phase reuses it too. Not
    # always all of it: glibc takes the smallest free block that fits, which may be one given back before (where the
    # heap's blocks fall moves with address randomization): of the pages faulted in outside, 4-39 % in 30 runs.
    fresh = sum(decoder[4:7]) + sum(denoiser[4:7])
    assert fresh < 0.6 * (sum(decoder[:3]) + sum(denoiser[:3])), (decoder, denoiser)
    # The freed similarity graph (160 MiB): outside, unmapped at once; inside, kept in the heap until the decoder's
    # backward starts, which gives it back.
    (kept_outside, kept_inside), resident = result["similarity_kept_mib"], result["similarity_resident_mib"]
    assert kept_outside < 32 and kept_inside > 150, (kept_outside, kept_inside)
    assert resident[3] < 32 and resident[7] < 32, resident
    assert result["given_back_mib"] > 64  # the heap kept between iterations, given back on exit


@pytest.mark.parametrize("release", [True, False])
def test_optimizing_on_cpu_releases_freed_memory_when_asked(model_dirs, subject, make_config, monkeypatch, release):
    calls, heaps = [], []

    @contextmanager
    def heap(module):
        heaps.append(type(module).__name__)
        yield True

    monkeypatch.setattr("siso.optimize.release_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("siso.optimize.reuse_heap", heap)
    config = make_config("sd", max_iters=1)
    config.memory.release_freed_memory = release
    run_losses(model_dirs["sd"], subject, config)
    assert len(calls) == release
    assert heaps == (["Decoder"] if release else [])  # the VAE decoder's backward


class RecordingLibc:
    """Stands in for glibc: records the ``mallopt`` and ``malloc_trim`` calls, in order."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim",))
        return 1


@pytest.mark.parametrize("fits", [True, False])
def test_reuse_heap_in_the_loop_trims_after_each_decoder_forward_and_before_its_backward(
    model_dirs, subject, make_config, monkeypatch, fits
):
    from siso import memory

    libc = RecordingLibc()
    monkeypatch.setattr(memory, "_glibc", lambda: libc)
    monkeypatch.setattr(memory, "_keep_heap", lambda libc: fits)
    monkeypatch.setattr("siso.optimize.release_freed_memory", lambda: True)
    run_losses(model_dirs["sd"], subject, make_config("sd", max_iters=3))
    heap_on, heap_off = ("mallopt", memory._M_MMAP_MAX, 0), ("mallopt", memory._M_MMAP_MAX, memory._GLIBC_MMAP_MAX)
    calls = libc.calls
    assert calls[:2] == [
        ("mallopt", memory._M_TRIM_THRESHOLD, memory.KEEP_HEAP),
        ("mallopt", memory._M_MMAP_THRESHOLD, memory.HEAP_THRESHOLD),
    ]
    # Each decoder forward is followed by a trim; two iterations take an optimizer step (the last builds no graph):
    # their decoder backward is trimmed first, then from the heap, then back to mappings, and trimmed again if what
    # it freed does not fit; on exit the settings come back and the heap is trimmed.
    trim = ("trim",)
    iteration = [trim, trim, heap_on, heap_off] + ([] if fits else [trim])
    assert calls[2:] == iteration * 2 + [trim] + [
        heap_off,
        ("mallopt", memory._M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD),
        ("mallopt", memory._M_TRIM_THRESHOLD, memory._GLIBC_TRIM_THRESHOLD),
        ("trim",),
    ]


def test_heap_is_kept_only_if_the_peak_plus_it_fits_in_most_of_what_the_process_can_hold():
    GB = 10**9
    # Figures read at the end of the VAE decoder's backward on a 24.7 GB machine (benchmarks/RESULTS.md). SD-Turbo at
    # 512 px: 4.8 GB free in the heap, 10 GB resident, 13.6 GB more available, a 13.3 GB peak: 18.1 of 21.2 GB.
    assert heap_fits(free=int(4.8 * GB), resident=10 * GB, room=int(13.6 * GB), peak=int(13.3 * GB))
    # At 768 px: 5.7 GB free, a 16.7 GB peak: 22.4 GB, over 90 % of 24.6.
    assert not heap_fits(free=int(5.7 * GB), resident=int(14.3 * GB), room=int(10.3 * GB), peak=int(16.7 * GB))
    # Other programs took the memory since: 512 px on what has become a 16 GB machine.
    assert not heap_fits(free=int(4.8 * GB), resident=10 * GB, room=6 * GB, peak=int(13.3 * GB))
    assert heap_fits(free=0, resident=10 * GB, room=6 * GB, peak=int(13.3 * GB))  # nothing to keep


def _system(tmp_path, cgroup_line, files):
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       24684084 kB\nMemAvailable:   10000000 kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    for name, text in files.items():
        (cgroups / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroups / name).write_text(text + "\n")
    return proc, cgroups


@pytest.mark.parametrize(
    ("cgroup_line", "files", "room"),
    [
        ("0::/", {}, 10_240_000_000),  # no cgroup files: MemAvailable
        ("0::/", {"memory.max": "max", "memory.current": "5000000000"}, 10_240_000_000),  # v2, no limit
        ("0::/job", {"job/memory.max": "8000000000", "job/memory.current": "6000000000"}, 2_000_000_000),  # v2
        ("0::/job", {"memory.max": "8000000000", "memory.current": "7000000000"}, 1_000_000_000),  # v2, namespace
        ("odd line\n0::/job", {"job/memory.max": "8000000000", "job/memory.current": "6000000000"}, 2_000_000_000),
        (
            "4:memory:/job",  # v1, seen from a container: its cgroup is the root of the mount
            {"memory/memory.limit_in_bytes": "9000000000", "memory/memory.usage_in_bytes": "6000000000"},
            3_000_000_000,
        ),
        (
            "4:memory:/",  # v1, no limit (a huge number)
            {"memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "1000"},
            10_240_000_000,
        ),
    ],
)
def test_memory_room_is_the_memory_available_within_the_cgroup_limit(tmp_path, cgroup_line, files, room):
    proc, cgroups = _system(tmp_path, cgroup_line, files)
    assert memory_room(proc, cgroups) == room


def test_memory_room_unknown_without_proc(tmp_path):
    assert memory_room(tmp_path / "nothing", tmp_path) is None


# --- the command line -------------------------------------------------------------------------------------------------


def test_keep_freed_memory_flag():
    parser = argparse.ArgumentParser()
    add_memory_options(parser)
    assert memory_settings(parser.parse_args([])).release_freed_memory
    assert not memory_settings(parser.parse_args(["--keep-freed-memory"])).release_freed_memory


@pytest.mark.parametrize("family", ["flux", "sana"])
def test_cli_quantized_run_and_quantized_reuse(model_dirs, subject_path, similarity_args, tmp_path, family):
    out, again = tmp_path / "run", tmp_path / "again"
    prompts = ["--prompt", "a dog on the beach", "--steps", "2", "--seed", "3"]
    proc = run_siso(
        [
            "generate",
            "--subject",
            str(subject_path),
            "--model",
            str(model_dirs[family]),
            *similarity_args,
            "--resolution",
            str(SIZES[family]),
            "--max-iters",
            "3",
            "--lr",
            "1e-2",
            "--quantize",
            "int8",
            "--gradient-checkpointing",
            *prompts,
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no notices from torchao or the quantizers
    memory = json.loads((out / "config.json").read_text())["siso"]["memory"]
    assert memory == {
        "offload_text_encoders": True,
        "gradient_checkpointing": True,
        "quantize": "int8",
        "release_freed_memory": True,
    }
    [record] = json.loads((out / "metrics.json").read_text())["images"]

    proc = run_siso(["generate", "--lora", str(out / "lora"), "--quantize", "int8", *prompts, "--out", str(again)])
    assert proc.returncode == 0, proc.stderr
    assert json.loads((again / "config.json").read_text())["quantize"] == "int8"
    assert np.array_equal(np.asarray(Image.open(out / record["file"])), np.asarray(Image.open(again / record["file"])))


def test_dtype_auto_is_bf16_on_cuda_and_fp32_elsewhere():
    from siso.backbones import resolve_dtype

    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bf16"
    assert resolve_dtype("auto", "cpu") == resolve_dtype("auto", "mps") == "fp32"
    assert resolve_dtype("fp16", "cpu") == "fp16"  # a dtype asked for is kept
