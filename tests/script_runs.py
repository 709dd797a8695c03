"""What the tests that run train.py or evaluate.py in subprocesses share: the tiny models they train or score, and
an environment with one thread per process (so float32 arithmetic is repeatable) in which the callbacks and
backbones those tests define are importable."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A class-conditional UNet for 16 px digits 0-4 (ClassConditionalDiffusion init args), one attention level.
TINY_UNET = {"num_classes": 5, "sample_size": 16, "block_out_channels": [8, 16], "layers_per_block": 1,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
             "attention_head_dim": 4, "norm_num_groups": 4, "samples_per_class": 2, "sample_steps": 5}


def tiny_lfdn(cache_dir: Path, backbone: str = "ood_lightning.backbones.MultiLayerFeatures") -> dict:
    """The model section of a config: an LFDN of width 32 and one block on a random-init EfficientNet-Lite0 (random
    init is explicit, weights null: meaningless but deterministic features)."""
    init = {"backbone": {"class_path": backbone, "init_args": {"model_name": "tf_efficientnet_lite0", "weights": None}},
            "hidden_dim": 32, "num_blocks": 1, "cache_dir": str(cache_dir)}
    return {"class_path": "ood_lightning.detectors.lfdn.LFDNDetector", "init_args": init}


def script_env(**extra: str) -> dict[str, str]:
    """os.environ with one thread per process, warnings off and tests/ plus the repository on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}
