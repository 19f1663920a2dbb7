"""`siso.bench.report`: the table a benchmark prints."""

from siso.bench import report


def test_report_of_a_cpu_run_says_unknown_peak():
    parts = dict.fromkeys(["denoiser", "vae decode", "dino", "ir", "optimizer step", "other"], 0.1)
    row = {"config": "default", "subjects": 1, "dtype": "fp32", "seconds_per_iteration": 2.0, "seconds_min": 1.0,
           "seconds_max": 3.0, "cpu_seconds_per_iteration": 3.5, "peak_memory_gb": None, "peak_memory_kind": None,
           "flops_per_iteration": 4e12, "achieved_tflops": 2.0, "share_of_peak": None, "first_image_seconds": 9.0,
           "parts_seconds": parts}  # fmt: skip
    result = {"settings": {"model": "sd-turbo", "resolution": 512, "iters": 5, "warmup": 1}, "device": "CPU",
              "threads": 2, "torch": "2.13", "rows": [row]}  # fmt: skip
    text = report(result)
    assert "| default | fp32 | 2.000 (1.000-3.000) | 3.500 | n/a | 4000.0 | 2.000 | unknown | 9.0 s |  |" in text
