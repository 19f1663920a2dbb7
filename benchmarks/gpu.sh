#!/usr/bin/env bash
# The first GPU run, prepared: `siso bench` at real size (random weights) in bf16 for sd-turbo, sdxl-turbo,
# flux-schnell and sana (reference, default, fast where the backbone has a tiny VAE, a refine: inversion at the
# refine's strength, then the loop with the background and structure terms, and compose-saved: two saved subjects'
# LoRAs drawn together by region, K + 1 = 3 denoiser passes a step, against a one-adapter --lora image, then polish
# iterations against default's), plus an edit (inversion, then the edit loop) on sd-turbo and sdxl-turbo, in one
# command that needs no network.
#
#   benchmarks/gpu.sh --fetch      here, with network: the wheels the GPU machine lacks, into .whl/ (git-ignored;
#                                  about 22 MB: diffusers and the transformers/peft versions siso is tested with)
#   benchmarks/gpu.sh [OUT]        on the GPU machine (a CUDA torch, no diffusers, no network), from a copy of the
#                                  working tree with .whl/ beside it: installs the wheels into /tmp/siso-site, then
#                                  writes OUT/bench-<model>.md and .json (OUT: the argument, else $OUT, else
#                                  benchmarks/results/gpu); at most 9 minutes 35 seconds and a few seconds on an
#                                  H200, each backbone cut at its share
#   benchmarks/gpu.sh --tiny [OUT] the script's path with tiny random models on the CPU, installed as it is (CI runs
#                                  it: tests/bench/test_gpu_script.py): every configuration once, on sd-turbo (the
#                                  refine and compose-saved included), and sdxl-turbo's edit, flux-schnell's fast loss
#                                  and sana's default
#
# A backbone that fails or runs out of its time is named at the end and the others still run; the exit status is 1
# then. The reports say which allocator, device and dtype each row ran with.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 regex==2026.11.19 importlib_metadata==10.2.0 zipp==4.1.2)
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch" ]; then
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        platforms+=(--platform "$p")
    done
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
        -d .whl "${WHEELS[@]}"
    exit 0
fi

tiny=0
if [ "${1:-}" = "--tiny" ]; then
    tiny=1
    shift
fi
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"

if [ "$tiny" = 0 ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu.sh: no wheels in .whl/; run benchmarks/gpu.sh --fetch on a machine with network first" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/siso-site .whl/*.whl
    export PYTHONPATH="/tmp/siso-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('gpu.sh:', torch.cuda.get_device_name(), 'torch', torch.__version__)"
    common=(--dtype bf16 --iters 3 --warmup 1 --device cuda)
    model_arg() { echo "$1"; }
    extra() { :; }
else
    models=$(mktemp -d)
    trap 'rm -rf "$models"' EXIT
    "$PY" - "$models" <<'PYTHON'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
import tiny  # the tests' tiny random models and tokenizers

root = Path(sys.argv[1])
for name, make in [("sd-turbo", tiny.make_sd_turbo), ("sdxl-turbo", tiny.make_sdxl_turbo),
                   ("flux-schnell", tiny.make_flux_schnell), ("sana", tiny.make_sana),
                   ("dino", tiny.make_dino), ("clip", tiny.make_clip_vision)]:
    make(root / name)
tiny.make_tiny_vae(root / "taesd")
tiny.make_tiny_vae(root / "taef1", latent_channels=16)
PYTHON
    common=(--dtype fp32 --iters 1 --warmup 0 --device cpu --resolution 64
            --dino-model "$models/dino" --ir-model "$models/clip" --dino-resolution 28)
    model_arg() { echo "$models/$1"; }
    extra() {
        case "$1" in
            sd-turbo | sdxl-turbo) echo "--tiny-vae $models/taesd" ;;
            flux-schnell) echo "--tiny-vae $models/taef1" ;;
        esac
    }
fi

failed=()
run() {  # MODEL CONFIGS SECONDS
    local model=$1 configs=$2 seconds=$3 status=0 subjects=1
    # compose-saved composes two saved subjects; the other configurations then measure one (`siso bench --help`).
    case ",$configs," in *,compose-saved,*) subjects=2 ;; esac
    # The shares cut the GPU machine's budget; tiny models on a CPU (CI, a loaded machine) get three times as long.
    if [ "$tiny" = 1 ]; then seconds=$((seconds * 3)); fi
    echo "== gpu.sh: $model ($configs), at most ${seconds} s, from $(date +%T)"
    # shellcheck disable=SC2046
    timeout "$seconds" "$PY" -m siso bench --model "$(model_arg "$model")" --config "$configs" --subjects "$subjects" \
        "${common[@]}" $(extra "$model") --json "$out/bench-$model.json" >"$out/bench-$model.md" || status=$?
    if [ "$status" = 0 ]; then
        cat "$out/bench-$model.md"
    else
        echo "gpu.sh: $model ended with status $status (124: out of its time)"
        failed+=("$model")
    fi
}

if [ "$tiny" = 0 ]; then
    run sd-turbo reference,default,fast,edit,refine,compose-saved 145
    run sdxl-turbo reference,default,fast,edit,refine,compose-saved 160
    run flux-schnell reference,default,fast,refine,compose-saved 175
    run sana reference,default,refine,compose-saved 95
else  # the script's path: every configuration once (on sd-turbo), every other backbone once, in its own path
    run sd-turbo reference,default,fast,edit,refine,compose-saved 140
    run sdxl-turbo edit 130
    run flux-schnell fast 150
    run sana default 80
fi

echo "gpu.sh: reports in $out"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu.sh: not measured: ${failed[*]}" >&2
    exit 1
fi
