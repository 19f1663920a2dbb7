"""A generation job refuses bad values before any work starts."""

import math

import pytest

from siso.run import GenerationJob


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": [" "]}, "non-empty prompt"),
        ({"seeds": []}, "at least one seed"),
        ({"seeds": [0, 2**64]}, "every seed must be between"),
        ({"num_inference_steps": 0}, "num_inference_steps must be >= 1"),
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number >= 0, got nan"),
        ({"guidance_scale": math.inf}, "guidance_scale must be a finite number >= 0, got inf"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
    ],
)
def test_generation_job_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationJob(**{"prompts": ["a dog"], "seeds": [0], **kwargs})
