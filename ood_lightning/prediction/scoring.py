"""Per-image scores of a `trainer.predict` run, gathered across DDP processes: every image once, in input order."""
from __future__ import annotations

import lightning as L
from torch import Tensor
from tqdm import tqdm

from ood_lightning.metrics import ScoreCollector


class ImageScores(L.Callback):
    """Collects the scores (and extras, e.g. a classifier's prediction) that `OODDetector.predict_step` returns,
    keyed by each image's position; the DistributedSampler's repeated images count once. After predicting, every
    process holds `result`: {"index": positions scored (sorted), "scores": {name: float64}, "extras": {...},
    "skipped": positions that could not be read (sorted)}."""

    def __init__(self):
        self.collector: ScoreCollector | None = None
        self.result: dict | None = None
        self.bar: tqdm | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module) -> None:
        self.collector = ScoreCollector(pl_module.score_names, extra_names=pl_module.extra_names).to(pl_module.device)
        loaders = trainer.predict_dataloaders
        total = sum(len(loader.dataset) for loader in (loaders if isinstance(loaders, (list, tuple)) else [loaders]))
        self.bar = tqdm(total=total, desc="scoring", unit="img", dynamic_ncols=True, disable=not trainer.is_global_zero)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module, outputs: dict[str, Tensor] | None, batch: dict,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.collector.add_skipped(batch["skipped"])
        if outputs:
            extras = {key: outputs[key] for key in pl_module.extra_names if key in outputs}
            scores = {key: value for key, value in outputs.items() if key not in extras}
            self.collector.update(scores, batch["index"], extras=extras)
        self.bar.update((len(batch["index"]) + len(batch["skipped"])) * trainer.world_size)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.bar.close()
        out = self.collector.compute()  # every rank: gathers across processes
        out.setdefault("extras", {})
        self.result = out
