"""``siso bench``'s run: its settings (`BenchSettings`) and every configuration (at every subject count) in a process of
its own."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch

from siso.backbones import check_can_edit
from siso.bench.architectures import check_tiny_vae
from siso.bench.compose import run_compose_saved
from siso.bench.measure import CONFIGURATIONS, Configuration, optim_settings, run_configuration
from siso.config import DTYPES, MAX_SUBJECTS, SimilaritySettings
from siso.devices import default_device, resolve_dtype


@dataclass
class BenchSettings:
    """What to benchmark.

    Attributes:
        model: A backbone name (built at its published architecture, random weights), or a local diffusers folder
            (loaded, with the similarity networks of ``similarity``: the tests' tiny models).
        configs: Configuration names, run in this order (``reference`` first when a ratio is wanted; ``edit`` edits a
            photo and ``refine`` refines one, for the backbones that can edit; ``default`` too when their ratios to it
            are wanted; ``compose-saved`` draws saved subjects together and polishes them, `siso.bench.compose`, and
            brings its baseline: ``default`` runs before it, at one subject, when not named).
        resolution: Image side in pixels.
        grad_steps: Steps with gradient (``None``: the family's); more than the family's denoising steps add steps.
        iters: Measured iterations per configuration.
        warmup: Iterations run first and not measured.
        dtype: The ``default`` configuration's dtype (``auto``: bf16 on CUDA, fp32 elsewhere).
        gradient_checkpointing: Measure ``default`` (and ``fast``) with ``--gradient-checkpointing`` (a lever, alone).
        compile: Measure them with ``--compile`` (a lever, alone; the compile time is reported).
        device: Torch device (``None``: cuda, else mps, else cpu).
        similarity: For a model folder: where the similarity networks are; ``None`` for a named backbone.
        tiny_vae: For a model folder: the fast loss's ``AutoencoderTiny`` (``None``: the family's Hub id).
        isolate: Run each configuration in a fresh process (so each peak memory is its own).
        subjects: Subject counts: each configuration is measured scoring each count of subjects, in this order (one:
            `siso.losses.SimilarityLoss`, the paper's loss; several: `siso.losses.CompositionLoss`, in side-by-side
            boxes, as ``siso generate`` with several ``--subject``). ``edit`` and ``refine`` take one. With
            ``compose-saved`` the counts are its saved subjects' (each count a row) and every other configuration
            measures one subject: the single-subject work it is compared with (`plan`).
    """

    model: str = "sd-turbo"
    configs: tuple[str, ...] = ("reference", "default")
    resolution: int = 512
    grad_steps: int | None = None
    iters: int = 5
    warmup: int = 1
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    device: str | None = None
    similarity: SimilaritySettings | None = None
    tiny_vae: str | None = None
    isolate: bool = True
    subjects: tuple[int, ...] = (1,)

    def __post_init__(self):
        self.device = self.device or default_device()
        unknown = [c for c in self.configs if c not in CONFIGURATIONS]
        if unknown or not self.configs:
            raise ValueError(f"unknown benchmark configuration(s) {unknown}; known: {', '.join(CONFIGURATIONS)}")
        if self.iters < 1 or self.warmup < 0:
            raise ValueError(f"iters must be >= 1 and warmup >= 0, got {self.iters} and {self.warmup}")
        if self.resolution < 64 or self.resolution % 64:
            raise ValueError(f"resolution must be a multiple of 64, got {self.resolution}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if "fast" in self.configs and self.similarity is None:
            check_tiny_vae(self.model)
        if not self.subjects or len(set(self.subjects)) < len(self.subjects):
            raise ValueError(f"subjects must name each subject count once, got {list(self.subjects)}")
        if any(not 1 <= count <= MAX_SUBJECTS for count in self.subjects):
            raise ValueError(f"subjects must be between 1 and {MAX_SUBJECTS}, got {list(self.subjects)}")
        for name in self.configs:
            kind = CONFIGURATIONS[name].kind
            if kind in ("edit", "refine"):
                try:
                    check_can_edit(self.model)
                except ValueError as err:
                    raise ValueError(f"the {name} configuration needs a backbone that edits: {err}") from None
                if max(self.subjects) > 1 and COMPOSE not in self.configs:
                    raise ValueError(f"the {name} configuration measures one subject: give --subjects 1 for it")
            optim_settings(self.model, self, kind)  # checked now, not in a worker process

    def plan(self) -> list[tuple[str, int]]:
        """The (configuration, subject count) pairs to run, in order: each configuration at each count, one after the
        other; with ``compose-saved``, it at each count and every other configuration at one subject, ``default``
        (its baseline) just before it when ``configs`` does not name it."""
        if COMPOSE not in self.configs:
            return [(name, count) for name in self.configs for count in self.subjects]
        names = list(self.configs)
        if "default" not in names:
            names.insert(names.index(COMPOSE), "default")
        return [(name, count) for name in names for count in (self.subjects if name == COMPOSE else (1,))]


COMPOSE = "compose-saved"


class BenchError(RuntimeError):
    """A configuration failed in its worker process; the message ends with the worker's last error line."""


def run_bench(settings: BenchSettings) -> dict:
    """Run every configuration of ``settings`` at every subject count (each configuration's counts one after the
    other, so that they meet the same load on the machine); returns the settings, the device and one row per
    configuration and count (`BenchSettings.plan`): with ``speedup`` and ``memory_ratio`` against ``reference`` at
    the same count when it ran, with ``vs_one_subject`` (time, CPU time, peak memory and FLOPs as ratios to the same
    configuration's one-subject row) for several subjects when one subject ran too, and, for an edit, a refine or a
    composition's polish (which do other work than generation: no ratio to the reference), with ``vs_default`` when
    ``default`` ran at one subject: time, CPU time, peak memory and FLOPs per iteration as ratios to its, and an edit's
    or a refine's inversion's seconds and CPU seconds in its iterations (``inversion``, ``inversion_cpu``)."""
    rows = [
        _run_isolated(settings, name, count) if settings.isolate else _run(settings, name, count)
        for name, count in settings.plan()
    ]
    references = {r["subjects"]: r for r in rows if r["config"] == "reference"}
    singles = {r["config"]: r for r in rows if r["subjects"] == 1}
    compared = ("seconds_per_iteration", "cpu_seconds_per_iteration", "peak_memory_gb", "flops_per_iteration")
    # siso's default under the same lever as the rest (``default + checkpointing``), for the other kinds' ratios
    default = next((r for r in rows if r["subjects"] == 1 and r["config"].split(" + ")[0] == "default"), None)
    for row in rows:
        learns = CONFIGURATIONS[row["config"].split(" + ")[0]].kind == "learn"
        reference = references.get(row["subjects"])
        if reference is not None and learns:  # (an edit does other work: no ratio)
            row["speedup"] = reference["seconds_per_iteration"] / row["seconds_per_iteration"]
            row["memory_ratio"] = _ratio(row["peak_memory_gb"], reference["peak_memory_gb"])
        single = singles.get(row["config"])
        if single is not None and row["subjects"] > 1:
            row["vs_one_subject"] = {key: _ratio(row[key], single[key]) for key in compared}
        if default is not None and not learns:
            row["vs_default"] = {key: _ratio(row[key], default[key]) for key in compared}
            inversion = row["inversion"]
            if inversion is not None:
                row["vs_default"]["inversion"] = inversion["seconds"] / default["seconds_per_iteration"]
                row["vs_default"]["inversion_cpu"] = inversion["cpu_seconds"] / default["cpu_seconds_per_iteration"]
    device = torch.device(settings.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {
        "settings": {**dataclasses.asdict(settings), "dtype": resolve_dtype(settings.dtype, settings.device)},
        "device": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def _ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or ``None`` where either is unknown (no peak memory on this device)."""
    return value / base if value and base else None


def _run(settings: BenchSettings, name: str, subjects: int) -> dict:
    configuration = CONFIGURATIONS[name]
    if name != "reference":  # siso's configurations take the chosen dtype and lever
        memory = dataclasses.replace(configuration.memory, gradient_checkpointing=settings.gradient_checkpointing)
        accel = dataclasses.replace(configuration.accel, compile=settings.compile)
        configuration = dataclasses.replace(configuration, dtype=settings.dtype, memory=memory, accel=accel)
        name += " + checkpointing" if settings.gradient_checkpointing else ""
        name += " + compile" if settings.compile else ""
    measure = run_compose_saved if configuration.kind == "compose" else run_configuration
    row = measure(settings.model, settings, name, configuration, subjects)
    if settings.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def _run_isolated(settings: BenchSettings, name: str, subjects: int) -> dict:
    """`_run` in a fresh process: its peak memory is its own, not what an earlier configuration left allocated."""
    spec = json.dumps({"settings": dataclasses.asdict(settings), "config": name, "subjects": subjects})
    env = worker_environment(CONFIGURATIONS[name])
    proc = subprocess.run([sys.executable, "-m", "siso.bench", spec], capture_output=True, text=True, env=env)
    what = name if subjects == 1 else f"{name} ({subjects} subjects)"
    if proc.returncode < 0:  # killed: on Linux, SIGKILL is most often the out-of-memory killer
        raise BenchError(
            f"benchmark configuration {what!r} was killed (signal {-proc.returncode}); if by the system for memory, "
            "try --gradient-checkpointing or a smaller --resolution"
        )
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise BenchError(f"benchmark configuration {what!r} failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_environment(configuration: Configuration, environment: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a configuration's worker process: ``environment`` (this process's by default), without
    ``LD_PRELOAD`` for a configuration on the system's malloc (``reference``)."""
    env = dict(os.environ if environment is None else environment)
    if configuration.system_malloc:
        env.pop("LD_PRELOAD", None)
    return env


def _worker(spec: str) -> None:
    data = json.loads(spec)
    values = data["settings"]
    if values["similarity"] is not None:
        values["similarity"] = SimilaritySettings(**values["similarity"])
    values["configs"], values["subjects"] = tuple(values["configs"]), tuple(values["subjects"])
    print(json.dumps(_run(BenchSettings(**{**values, "isolate": False}), data["config"], data["subjects"])))
