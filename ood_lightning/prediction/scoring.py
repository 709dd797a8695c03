"""Per-image scores of a `trainer.predict` run, gathered across DDP processes: every image once, in input order;
and the pictures a detector makes per image (DiffGuard's synthesis) for the images the contact sheet will show."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ood_lightning.metrics import ScoreCollector

THUMBNAIL = 112  # pixels: a kept picture's longest side at most (the contact sheet's tile)


class ImageScores(L.Callback):
    """Collects the scores (and extras, e.g. a classifier's prediction) that `OODDetector.predict_step` returns,
    keyed by each image's position; the DistributedSampler's repeated images count once. After predicting, every
    process holds `result`: {"index": positions scored (sorted), "scores": {name: float64}, "extras": {...},
    "skipped": positions that could not be read (sorted)}.

    With `sheet` = (score name, count), the detector's per-image `pictures` are kept (as uint8 thumbnails) for the
    `count` highest and `count` lowest images by that score, the ones the contact sheet shows, and rank 0's
    `result["pictures"]` holds them: {position: {row name: uint8 [H, W, 3]}}. Nothing else is kept, so memory does
    not grow with the number of images.
    """

    def __init__(self, sheet: tuple[str, int] | None = None):
        self.sheet = sheet
        self.collector: ScoreCollector | None = None
        self.result: dict | None = None
        self.bar: tqdm | None = None
        self.candidates: dict[int, tuple[float, dict[str, np.ndarray]]] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module) -> None:
        self.collector = ScoreCollector(pl_module.score_names, extra_names=pl_module.extra_names).to(pl_module.device)
        self.candidates = {}
        loaders = trainer.predict_dataloaders
        total = sum(len(loader.dataset) for loader in (loaders if isinstance(loaders, (list, tuple)) else [loaders]))
        self.bar = tqdm(total=total, desc="scoring", unit="img", dynamic_ncols=True, disable=not trainer.is_global_zero)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module, outputs: dict[str, Tensor] | None, batch: dict,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.collector.add_skipped(batch["skipped"])
        pictures, pl_module.pictures = pl_module.pictures, {}
        if outputs:
            extras = {key: outputs[key] for key in pl_module.extra_names if key in outputs}
            scores = {key: value for key, value in outputs.items() if key not in extras}
            self.collector.update(scores, batch["index"], extras=extras)
            if self.sheet and pictures:
                self._keep(batch["index"], outputs[self.sheet[0]], pictures)
        self.bar.update((len(batch["index"]) + len(batch["skipped"])) * trainer.world_size)

    def _keep(self, index: Tensor, values: Tensor, pictures: dict[str, Tensor]) -> None:
        """Add this batch's pictures to the candidates, then keep only the `count` highest and lowest."""
        values = values.detach().double().cpu().tolist()
        for row, position in enumerate(index.tolist()):
            self.candidates[position] = (values[row], {name: thumbnail(images[row])
                                                        for name, images in pictures.items()})
        self.candidates = shown_candidates(self.candidates, self.sheet[1])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.bar.close()
        out = self.collector.compute()  # every rank: gathers across processes
        out.setdefault("extras", {})
        if self.sheet:
            candidates = self.candidates
            if trainer.world_size > 1:
                gathered = [None] * trainer.world_size
                torch.distributed.all_gather_object(gathered, candidates)
                candidates = {k: v for part in gathered for k, v in part.items()}
            out["pictures"] = {k: pictures for k, (_, pictures) in
                               shown_candidates(candidates, self.sheet[1]).items()}
        self.result = out


def shown_candidates(candidates: dict[int, tuple[float, dict]], count: int) -> dict[int, tuple[float, dict]]:
    """The `count` highest- and `count` lowest-scoring of {position: (score, pictures)}, ties by position (the
    contact sheet's stable order); NaN scores last."""
    order = sorted(candidates, key=lambda k: (np.nan_to_num(-candidates[k][0], nan=np.inf), k))
    keep = set(order[:count]) | set(sorted(candidates, key=lambda k: (np.nan_to_num(candidates[k][0], nan=np.inf),
                                                                      -k))[:count])
    return {k: candidates[k] for k in keep}


def thumbnail(image: Tensor) -> np.ndarray:
    """A [3, H, W] picture in [0, 1] as uint8 [H, W, 3], its longest side at most THUMBNAIL pixels."""
    image = image.detach().float().clamp(0, 1)
    scale = THUMBNAIL / max(image.shape[-2:])
    if scale < 1:
        size = [max(1, round(side * scale)) for side in image.shape[-2:]]
        image = torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
