"""The SISO test-time optimization loop (paper Sec. 3, Algorithm 1) with early stopping (Appendix C)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from tqdm.auto import tqdm

from siso.accel import accelerated, eager
from siso.adapters import stack_lora
from siso.backbones import Backbone
from siso.config import SisoConfig
from siso.images import tensor_to_pil
from siso.lora import ADAPTER, LoraSnapshot, restore, snapshot, trainable
from siso.losses import SimilarityLoss
from siso.losses.networks import LossNetworks
from siso.losses.tiny_vae import load_tiny_vae, tiny_vae_name

# callback(iteration, image, loss terms) -> True to stop the run.
IterationCallback = Callable[[int, Image.Image, dict[str, float]], "bool | None"]
# render(text conditioning) -> image (1, 3, H, W) in [0, 1], differentiable w.r.t. the LoRA weights.
Render = Callable[[dict], torch.Tensor]


class Objective(Protocol):
    """What the loop minimises: images (B, 3, H, W) in [0, 1] -> loss terms, each of shape (B,) or scalar, with the
    scalar total under ``"loss"``. ``nets`` are the networks it runs (`SimilarityLoss.nets`), which ``--compile``
    compiles with the denoiser; a plain function will do where nothing is compiled."""

    nets: Mapping[str, torch.nn.Module]

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


class EarlyStopping:
    """Stop when the loss has not improved by ``min_improvement`` (relative) for ``patience`` iterations.

    An iteration improves iff ``best - loss > min_improvement * |best|`` (valid for losses of either sign; the
    reference code's ``loss < best * (1 + x)`` is only right for negative losses). The same rule decides which
    iteration is "best" for the returned image and weights, so the three always agree.
    """

    def __init__(self, min_improvement: float = 0.03, patience: int = 7):
        self.min_improvement = min_improvement
        self.patience = patience
        self.best = math.inf
        self.stale = 0

    def update(self, loss: float) -> bool:
        """Record one iteration's loss; returns whether it improved (and became the new best)."""
        improved = self.best == math.inf or self.best - loss > self.min_improvement * abs(self.best)
        if improved:
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


@dataclass
class SisoResult:
    """Outcome of `optimize_subject`.

    Attributes:
        best_image: The image of the best iteration.
        best_iteration: Its index (0 = the base model, before any update).
        best_loss: Its loss.
        best_lora: A copy of the LoRA weights that produced ``best_image`` (also loaded into the backbone).
        history: Per iteration: ``iteration``, the loss terms, ``seconds``.
        stop_reason: ``converged`` (early stopping), ``max_iters``, ``callback``, ``non-finite loss`` or
            ``interrupted`` (Ctrl-C / SIGTERM).
    """

    best_image: Image.Image
    best_iteration: int
    best_loss: float
    best_lora: LoraSnapshot
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "max_iters"

    @property
    def complete(self) -> bool:
        return self.stop_reason != "interrupted"

    def record(self) -> dict:
        """The JSON-serialisable facts of the run (what ``metrics.json`` files hold): no image, no weights."""
        return {
            "stop_reason": self.stop_reason,
            "best_iteration": self.best_iteration,
            "best_loss": self.best_loss,
            "seconds_per_iteration": self.seconds_per_iteration,
            "iterations": self.history,
        }

    @property
    def seconds_per_iteration(self) -> float | None:
        """The median wall time of an iteration (render, loss, backward, optimizer step, callback); ``None`` when the
        run was interrupted inside its first iteration."""
        return statistics.median(h["seconds"] for h in self.history) if self.history else None


def optimize_subject(
    backbone: Backbone,
    subject: Image.Image | Sequence[Image.Image],
    config: SisoConfig,
    callback: IterationCallback | None = None,
    loss_fn: SimilarityLoss | None = None,
    progress: bool = True,
    loss_vae: torch.nn.Module | None = None,
) -> SisoResult:
    """Learn a LoRA that makes ``backbone`` draw ``subject`` for ``config.train_prompt``.

    Each iteration samples one image from the same fixed noise with gradients through the last
    ``config.optim.grad_steps`` denoising steps and the VAE decode, scores it with the similarity loss and takes one
    AdamW step on the LoRA weights only. On return the backbone carries the best iteration's LoRA weights.

    Args:
        backbone: A frozen backbone without LoRA (`siso.backbones.load_backbone`).
        subject: The subject photo (RGB), or several photos of it.
        config: Run configuration. With ``config.ip_adapter`` the adapter is loaded here (with ``subject`` as its
            image) unless the backbone carries one; ``config.negatives``' generic negative needs ``loss_fn`` (its
            images come from `siso.runs.negatives.draw_generic`).
        callback: Called after every iteration with (iteration, image, loss terms); returning True stops the run.
        loss_fn: A prebuilt `SimilarityLoss` (loaded from ``config.similarity`` when omitted).
        progress: Show a tqdm bar.
        loss_vae: With ``config.fast.enabled``, a prebuilt tiny VAE (loaded by `siso.losses.tiny_vae` when omitted).

    Returns:
        The best image, its iteration, loss and LoRA weights, the per-iteration history and why the run stopped.
        A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the CLI) ends the run with ``stop_reason =
        "interrupted"`` and the best result so far; if it comes before the first image, it propagates.
    """
    photos = [subject] if isinstance(subject, Image.Image) else list(subject)
    if config.ip_adapter.enabled and backbone.ip_adapter is None:
        backbone.load_ip_adapter(config.ip_adapter, photos)
    if loss_fn is None:
        loss_fn = LossNetworks(config.similarity, backbone.device, backbone.dtype).loss(
            [photos], negatives=config.negatives
        )
    return optimize_generation(backbone, loss_fn, config, callback, progress, loss_vae)


def generation_render(backbone: Backbone, config: SisoConfig) -> Render:
    """Generation's render: ``config.optim``'s steps from the fixed noise of its seed, the last ``grad_steps`` with
    gradients."""
    opt = config.optim

    def render(cond: dict) -> torch.Tensor:
        generator = torch.Generator().manual_seed(opt.seed)
        return backbone.sample(cond, generator, opt.num_inference_steps, opt.grad_steps, opt.guidance_scale)

    return render


def optimize_generation(
    backbone: Backbone,
    objective: Objective,
    config: SisoConfig,
    callback: IterationCallback | None = None,
    progress: bool = True,
    loss_vae: torch.nn.Module | None = None,
    adapter: str = ADAPTER,
) -> SisoResult:
    """The SISO loop on images generated from fixed noise (`generation_render`), scored by ``objective``: one subject's
    `SimilarityLoss` (`optimize_subject`) or several subjects' `siso.losses.CompositionLoss`.

    Args and returns as `optimize_subject`'s; ``loss_vae`` is loaded when ``config.fast.enabled`` and it is omitted;
    ``adapter`` as `optimize_lora`'s.
    """
    if config.fast.enabled and loss_vae is None:
        loss_vae = load_tiny_vae(tiny_vae_name(config.fast, type(backbone)), backbone)
    render = generation_render(backbone, config)
    return optimize_lora(backbone, render, objective, config, callback, progress, loss_vae, adapter)


def optimize_lora(
    backbone: Backbone,
    render: Render,
    objective: Objective,
    config: SisoConfig,
    callback: IterationCallback | None = None,
    progress: bool = True,
    loss_vae: torch.nn.Module | None = None,
    adapter: str = ADAPTER,
    modules: dict[str, torch.nn.Module] | None = None,
) -> SisoResult:
    """The SISO loop, for any task: add LoRA, then per iteration render, score, and take one AdamW step.

    Generation renders from fixed noise and scores similarity (`optimize_subject`); editing renders from the
    inverted photo and adds the background term (`siso.editing.edit_subject`). Early stopping, the best image and
    LoRA snapshot, the callback, interrupts and non-finite losses are handled here, once. The iterations run inside
    `siso.accel.accelerated` (``config.accel``: how they run, never what they compute).

    Args:
        backbone: A frozen backbone without an adapter named ``adapter``. Adapters it carries under other names stay
            frozen, and those active stay active beside the new one (`stack_lora`).
        render: Text conditioning -> image with gradients (the conditioning is encoded once, or every iteration when
            the text encoders carry LoRA).
        objective: Image -> loss terms with the total under ``"loss"``, and the networks it runs (`Objective`).
        config: ``train_prompt``, ``lora``, ``optim``, ``memory`` (text-encoder offload, gradient checkpointing: on
            for the run only) and ``accel`` are used.
        callback: Called after every iteration with (iteration, image, loss terms); returning True stops the run.
        progress: Show a tqdm bar.
        loss_vae: Decode with this VAE while optimizing (the fast loss's tiny decoder, `siso.losses.tiny_vae`); the
            best image is then rendered again through the backbone's own VAE.
        adapter: The name of the LoRA adapter learned (peft's and diffusers' adapter name).
        modules: Pipeline component name -> module, whose trainable parameters are LoRA weights it carries already
            (a polish of saved subjects, `siso.runs.compose`, makes their adapters trainable); they are optimized
            instead of a new adapter. ``None``: add the adapter ``adapter`` (``config.lora``).

    Returns:
        As `optimize_subject`.
    """
    opt = config.optim
    if modules is None:
        with torch.random.fork_rng():
            torch.manual_seed(opt.seed)  # peft draws the LoRA A matrices from the global generator: seed them too
            modules = stack_lora(backbone, config.lora, adapter)
    lora = config.lora
    text_encoder = {
        "lr": opt.lr if lora.text_encoder_lr is None else lora.text_encoder_lr,
        "weight_decay": opt.weight_decay if lora.text_encoder_weight_decay is None else lora.text_encoder_weight_decay,
    }
    denoiser = {"lr": opt.lr, "weight_decay": opt.weight_decay}
    groups = [
        {"params": list(trainable(m).values()), **(denoiser if m is backbone.denoiser else text_encoder)}
        for m in modules.values()
    ]
    params = [p for g in groups for p in g["params"]]
    # On CUDA the fused kernel: one launch for all LoRA tensors instead of several per tensor.
    fused = backbone.device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=opt.weight_decay, fused=fused)
    stopper = EarlyStopping(opt.min_improvement, opt.patience)

    def conditioning():
        return backbone.encode_prompt(config.train_prompt, opt.guidance_scale)

    # Encoded here, before the text encoders are parked: with text-encoder LoRA (re-encoded from the second
    # iteration on) this also leaves the frozen encoders' embeddings cached.
    train_text_encoder = config.lora.train_text_encoder
    with nullcontext() if train_text_encoder else torch.no_grad():
        cond = conditioning()
    memory = config.memory
    if memory.offload_text_encoders:  # after encoding: those without LoRA are not needed until a new prompt
        backbone.park_text_encoders(keep=[name for name in modules if name != backbone.denoiser_name])
    best: dict = {}
    history: list[dict] = []
    stop_reason = "max_iters"
    bar = tqdm(range(opt.max_iters), desc="SISO", unit="it", disable=not progress)
    if config.accel.compile and not hasattr(objective, "nets"):
        raise TypeError("compiling needs the objective's networks: give it a `nets` mapping, as SimilarityLoss has")
    nets = objective.nets.values() if config.accel.compile else ()
    # On for this run only: the app and eval run go on using the backbone after it.
    checkpointing = backbone.gradient_checkpointing() if memory.gradient_checkpointing else nullcontext()
    try:
        with checkpointing, accelerated(backbone, config.accel, nets, loss_vae):
            for iteration in bar:
                start = time.perf_counter()
                # The last iteration takes no optimizer step: it builds no autograd graph (same numbers, less memory).
                last = iteration == opt.max_iters - 1
                graph = torch.no_grad() if last else nullcontext()
                # (Compiled modules run it eager: no second, gradient-free graph to compile.)
                with graph, eager() if last and config.accel.compile else nullcontext():
                    if train_text_encoder and iteration > 0:
                        cond = conditioning()
                    image = render(cond)
                    terms = objective(image)
                loss = terms["loss"]
                # One device-to-host read for all the terms (each float() would wait for the device once).
                means = torch.stack([term.detach().float().mean() for term in terms.values()]).tolist()
                values = dict(zip(terms, means, strict=True))
                pil = tensor_to_pil(image)[0]
                if not math.isfinite(values["loss"]):
                    history.append({"iteration": iteration, **values, "seconds": time.perf_counter() - start})
                    stop_reason = "non-finite loss"
                    break
                if stopper.update(values["loss"]):
                    # Snapshot before the optimizer step: these are the weights that produced this image.
                    best = {"image": pil, "iteration": iteration, "loss": values["loss"], "lora": snapshot(modules)}
                user_stop = callback is not None and callback(iteration, pil, values)
                if stopper.should_stop:
                    stop_reason = "converged"
                elif user_stop:
                    stop_reason = "callback"
                elif not last:  # an update after the last iteration would never be seen
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, opt.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                history.append({"iteration": iteration, **values, "seconds": time.perf_counter() - start})
                # The opt-in terms beside the total, so that a user sees what they add.
                extra = {name: f"{value:.4f}" for name, value in values.items() if name.startswith("negative")}
                bar.set_postfix(
                    {"loss": f"{values['loss']:.4f}", "best": f"{stopper.best:.4f}", **extra}, refresh=False
                )
                if stop_reason != "max_iters":
                    break
    except KeyboardInterrupt:
        if not best:
            raise
        stop_reason = "interrupted"
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
    if not best:
        raise FloatingPointError("the loss was not finite at the first iteration; try --dtype fp32")
    restore(modules, best["lora"])
    if loss_vae is not None:  # the frames came from the tiny decoder; the best image comes from the full VAE
        with torch.no_grad():
            best["image"] = tensor_to_pil(render(conditioning() if train_text_encoder else cond))[0]
    return SisoResult(best["image"], best["iteration"], best["loss"], best["lora"], history, stop_reason)
