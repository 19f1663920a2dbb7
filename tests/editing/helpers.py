"""What the editing tests share: a box mask and the edit config on the tiny models."""

import numpy as np

from siso.config import EditConfig, EditSettings, InversionSettings, OptimSettings, SimilaritySettings


def _box(photo, box=(40, 32, 80, 72)) -> np.ndarray:
    mask = np.zeros((photo.height, photo.width), bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def _edit_config(model_dirs, family="sd", **edit) -> EditConfig:
    return EditConfig(
        model=str(model_dirs[family]),
        train_prompt="a photo of a dog",
        similarity=SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"])),
        optim=OptimSettings(lr=1e-2, max_iters=4, num_inference_steps=4),
        edit=EditSettings(**{"mask_dilation": 1, **edit}),
        inversion=InversionSettings.preset("ddim"),  # fast; ReNoise itself is tested in test_inversion.py
    )
