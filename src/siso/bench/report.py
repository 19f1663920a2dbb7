"""The ``siso bench`` report: one Markdown row per configuration (and subject count), then seconds by part."""

from __future__ import annotations

from siso.bench.timing import PARTS


def _fmt(value, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def label(row: dict) -> str:
    """A row's name in the report: its configuration, with its subject count when several."""
    return row["config"] if row["subjects"] == 1 else f"{row['config']} ({row['subjects']} subjects)"


def report(result: dict) -> str:
    """The benchmark as Markdown: one row per configuration and subject count, then several subjects against one,
    then seconds by part."""
    s = result["settings"]
    lines = [
        f"siso bench: {s['model']}, {s['resolution']} px, {result['device']} ({result['threads']} threads), "
        f"torch {result['torch']}, {s['iters']} iterations after {s['warmup']} warm-up",
        "",
        "| config | dtype | s/iter (min-max) | CPU s/iter (in kernel) | peak memory | GFLOP/iter | TFLOP/s | "
        "share of peak | first image | vs reference: speed, memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        memory = "n/a" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']})"
        ratio = "" if "speedup" not in r else f"{r['speedup']:.2f}x, {_fmt(r['memory_ratio'], '.2f', 'x')}"
        kernel = r.get("kernel_cpu_seconds_per_iteration")
        cpu = f"{r['cpu_seconds_per_iteration']:.3f}" + ("" if kernel is None else f" ({kernel:.1f})")
        lines.append(
            f"| {label(r)} | {r['dtype']} | {r['seconds_per_iteration']:.3f} ({r['seconds_min']:.3f}-"
            f"{r['seconds_max']:.3f}) | {cpu} | {memory} | "
            f"{r['flops_per_iteration'] / 1e9:.1f} | {r['achieved_tflops']:.3f} | "
            f"{_fmt(r['share_of_peak'], '.0%') if r['share_of_peak'] is not None else 'unknown'} | "
            f"{r['first_image_seconds']:.1f} s | {ratio} |"
        )
    for r in result["rows"]:
        inversion = r.get("inversion")
        if inversion is not None:
            terms = "background and structure terms" if "structure" in r["loss_terms"] else "background term"
            lines += [
                "",
                f"`{label(r)}`: the {'image' if r['config'].startswith('refine') else 'photo'} was inverted first "
                f"({inversion['model_evaluations']} denoiser passes, {inversion['seconds']:.1f} s, "
                f"{inversion['cpu_seconds']:.1f} CPU s); its iterations "
                f"denoise the inverted latent and add the {terms}, so it has no ratio to the reference.",
            ]
    lines += _composition(result["rows"])
    against = [r for r in result["rows"] if "vs_default" in r and "composition" not in r]
    if against:
        lines += ["", "Editing and refining against `default` (its row, as ratios):", ""]
        lines += [f"- {label(r)}: {_against_default(r['vs_default'])}" for r in against]
    for r in result["rows"]:
        if r.get("compile_seconds") is not None:
            lines += ["", f"`{label(r)}`: the first iteration took {r['compile_seconds']:.1f} s more (compiling)."]
    if any(r.get("loss", "paper") != "paper" for r in result["rows"]):
        lines += [
            "",
            "`fast` is a different loss from the paper's: a tiny VAE decoder (TAESD) scores the images and DINOv2 sees "
            "224 px (final images still use the full VAE). Its effect on quality is not measured here.",
        ]
    several = [r for r in result["rows"] if r["subjects"] > 1]
    if several:
        lines += [
            "",
            "Several subjects: each subject's box (side by side, `siso.compose.default_slots`) is cropped from the "
            "image and scored by DINOv2 and CLIP against its photo, and DINOv2 also sees the whole image for the "
            "presence term (`siso.losses.CompositionLoss`), as `siso generate` with several `--subject`.",
        ]
    compared = [r for r in several if "vs_one_subject" in r]
    if compared:
        lines += ["", "Several subjects against one (the same configuration's one-subject row, as ratios):", ""]
        lines += [f"- {label(r)}: {_against_one(r['vs_one_subject'])}" for r in compared]
    counted = [r for r in result["rows"] if r.get("page_faults_per_iteration") is not None]
    if counted:
        lines += [
            "",
            "Page faults per iteration (each maps in a page of fresh memory; the kernel CPU "
            "seconds above are mostly these): "
            + ", ".join(f"{label(r)} {r['page_faults_per_iteration'] / 1e6:.2f} M" for r in counted)
            + ".",
        ]
    lines += [
        "",
        "C allocator (`siso.cli.startup`: tcmalloc where installed; the reference runs on the system's malloc): "
        + ", ".join(f"{label(r)} {r.get('allocator', 'unknown')}" for r in result["rows"])
        + ".",
    ]
    lines += _parts_table(
        "Seconds per iteration by part (median; forward + backward):", result["rows"], "parts_seconds", ".3f"
    )
    lines += _parts_table(
        "CPU seconds in the kernel per iteration by part (median; mostly page faults):",
        result["rows"],
        "parts_kernel_seconds",
        ".2f",
    )
    return "\n".join(lines) + "\n"


def _against_one(ratios: dict) -> str:
    """``vs_one_subject``'s ratios (`siso.bench.run_bench`) in words."""
    return (
        f"{_fmt(ratios['seconds_per_iteration'], '.2f', 'x')} the time per iteration, "
        f"{_fmt(ratios['cpu_seconds_per_iteration'], '.2f', 'x')} the CPU time, "
        f"{_fmt(ratios['peak_memory_gb'], '.2f', 'x')} the peak memory, "
        f"{_fmt(ratios['flops_per_iteration'], '.2f', 'x')} the FLOPs"
    )


def _against_default(ratios: dict) -> str:
    """``vs_default``'s ratios (`siso.bench.run_bench`) in words."""
    return (
        f"{_against_one(ratios)}; its inversion took as long as {ratios['inversion']:.2f} `default` iterations "
        f"({ratios['inversion_cpu']:.2f} in CPU time)"
    )


def _composition(rows: list[dict]) -> list[str]:
    """What ``compose-saved`` rows drew and polished, and their ratios to single-subject work; nothing without one."""
    composed = [r for r in rows if "composition" in r]
    lines = []
    for r in composed:
        c = r["composition"]
        single, together = c["lora_image"], c["composed_image"]
        steps = f"{c['steps']} step" + "s" * (c["steps"] > 1)
        lines += [
            "",
            f"`{label(r)}`: the LoRA adapters of {c['adapters']} saved subject{'s' * (c['adapters'] > 1)} (rank "
            f"{c['rank']}, random weights), each in its box ({', '.join(c['boxes'])}; soft edges of {c['edge']:g} "
            "px), drawn together by region: the "
            f"composed image took {together['seconds']:.3f} s ({together['seconds_min']:.3f}-"
            f"{together['seconds_max']:.3f}; {together['denoiser_passes']} denoiser passes in {steps}), "
            f"the single-subject `--lora` image {single['seconds']:.3f} s ({single['seconds_min']:.3f}-"
            f"{single['seconds_max']:.3f}; {single['denoiser_passes']} passes). Its iterations are the polish: the "
            "composed loss optimizing every subject's adapter at once through the regional forward, so it has no "
            "ratio to the reference.",
        ]
    if composed:
        lines += ["", "Composing saved subjects against one subject (as ratios):", ""]
    for r in composed:
        image = r["composition"]["vs_lora_image"]
        lines.append(
            f"- {label(r)}: the image {image['seconds']:.2f}x the time of a single-subject `--lora` image "
            f"({image['cpu_seconds']:.2f}x the CPU time, {image['denoiser_passes']:.2f}x the denoiser passes); "
            f"a polish iteration {_against_one(r['vs_default'])} of a `default` iteration"
        )
    return lines


def _parts_table(title: str, rows: list[dict], key: str, spec: str) -> list[str]:
    """A Markdown table of each row's ``key`` (seconds by part), or nothing if no row has it."""
    counted = [r for r in rows if r.get(key)]
    if not counted:
        return []
    lines = ["", title, "", "| config | " + " | ".join(PARTS) + " |", "|---|" + "---|" * len(PARTS)]
    return lines + [f"| {label(r)} | " + " | ".join(f"{r[key][p]:{spec}}" for p in PARTS) + " |" for r in counted]
