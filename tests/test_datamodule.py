"""The DataModule and collate: every test sample exactly once and in order, skips reported, sets replaceable."""
import gc

import lightning as L
import pytest
import torch

from data_helpers import make_class_tree, make_flat, write_corrupt_files
from ood_lightning.data import OODDataModule, collate

KEYS = {"image", "label", "index", "skipped"}


def _folders_module(tmp_path, **kwargs) -> OODDataModule:
    make_class_tree(tmp_path / "mine" / "train", per_class=5)  # 10 train images
    make_class_tree(tmp_path / "mine" / "test", per_class=4)  # 8 test images
    make_flat(tmp_path / "ood_a", n=7)
    make_flat(tmp_path / "ood_b", n=3)
    options = dict(benchmark="folders", root=str(tmp_path), image_size=8, batch_size=3, id_train="mine/train",
                   id_test="mine/test", ood={"ood_a": "ood_a", "ood_b": "ood_b"})
    return OODDataModule(**{**options, **kwargs})


# --- collate -----------------------------------------------------------------------------------------------------

def test_collate_images_and_skip_markers():
    items = [{"image": torch.zeros(3, 2, 2), "label": 1, "index": 0},
             {"image": None, "label": 0, "index": 1},
             {"image": torch.ones(3, 2, 2), "label": -1, "index": 2},
             None]
    batch = collate(items)
    assert set(batch) == KEYS and batch["image"].shape == (2, 3, 2, 2)
    assert batch["label"].dtype == batch["index"].dtype == batch["skipped"].dtype == torch.int64
    assert batch["label"].tolist() == [1, -1] and batch["index"].tolist() == [0, 2]
    assert batch["skipped"].tolist() == [1, -1]  # a bare None has no index


def test_collate_everything_skipped():
    batch = collate([{"image": None, "label": 3, "index": 7}, {"image": None, "label": 3, "index": 9}])
    assert set(batch) == KEYS and batch["image"].shape == (0,)
    assert batch["index"].shape == (0,) and batch["index"].dtype == torch.int64
    assert batch["skipped"].tolist() == [7, 9]


def test_collate_feature_items():
    batch = collate([{"feature": torch.randn(5), "label": -1, "index": i} for i in range(4)])
    assert set(batch) == {"feature", "label", "index", "skipped"}
    assert batch["feature"].shape == (4, 5) and batch["skipped"].shape == (0,)


# --- the DataModule ----------------------------------------------------------------------------------------------

def test_test_loaders_serve_every_sample_once_in_order(tmp_path):
    dm = _folders_module(tmp_path)
    dm.setup("test")
    assert list(dm.test_sets) == ["id", "ood_a", "ood_b"] and dm.id_name == "mine"
    loaders = dm.test_dataloader()
    assert len(loaders) == 3
    for (name, dataset), loader in zip(dm.test_sets.items(), loaders):
        batches = list(loader)
        assert all(set(batch) == KEYS for batch in batches)
        assert all(batch["image"].shape[1:] == (3, 8, 8) for batch in batches)
        order = torch.cat([batch["index"] for batch in batches]).tolist()
        assert order == list(range(len(dataset))), name  # no shuffling, no dropped last batch
    labels = torch.cat([batch["label"] for batch in loaders[0]]).tolist()
    assert labels == [0] * 4 + [1] * 4
    assert set(torch.cat([batch["label"] for batch in loaders[1]]).tolist()) == {-1}


def test_train_loader_covers_every_train_sample(tmp_path):
    dm = _folders_module(tmp_path)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = torch.cat([batch["index"] for batch in loader]).tolist()
    assert sorted(seen) == list(range(10))
    assert loader.drop_last is False and loader.batch_size == 3


def test_training_order_comes_from_seed_and_epoch_not_the_global_generator(tmp_path):
    dm = _folders_module(tmp_path)
    dm.setup("fit")

    def order(global_seed: int, epoch: int) -> list[int]:
        torch.manual_seed(global_seed)  # whatever consumed global random numbers before (e.g. a cache build)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # Lightning does this every epoch
        return torch.cat([batch["index"] for batch in loader]).tolist()

    assert order(0, 0) == order(123, 0)
    assert order(0, 0) != order(0, 1) and sorted(order(0, 1)) == list(range(10))
    assert order(0, 0) != list(range(10))  # shuffled


def test_corrupt_test_images_are_reported_not_dropped_silently(tmp_path):
    dm = _folders_module(tmp_path)
    write_corrupt_files(tmp_path / "ood_b")
    dm.setup("test")
    batches = list(dm.test_dataloader()[2])
    kept = torch.cat([batch["index"] for batch in batches]).tolist()
    skipped = torch.cat([batch["skipped"] for batch in batches]).tolist()
    assert len(skipped) == 3 and sorted(kept + skipped) == list(range(6))


def test_subsets_setup_once_and_replaceable_sets(tmp_path):
    dm = _folders_module(tmp_path, train_subset=4, eval_subset=5)
    dm.setup("fit")
    assert len(dm.train_set) == 4 and [len(ds) for ds in dm.test_sets.values()] == [5, 5, 3]
    replacement = [{"feature": torch.zeros(2), "label": -1, "index": i} for i in range(4)]
    dm.test_sets["ood_b"] = replacement
    dm.setup("test")  # idempotent: keeps the replacement
    assert dm.test_sets["ood_b"] is replacement
    assert torch.cat([b["index"] for b in dm.test_dataloader()[2]]).tolist() == [0, 1, 2, 3]


def test_worker_processes(tmp_path):
    dm = _folders_module(tmp_path, num_workers=1)
    dm.setup("test")
    loader = dm.test_dataloader()[1]
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    assert torch.cat([batch["index"] for batch in loader]).tolist() == list(range(7))
    del loader  # stop the persistent worker now: reaped later by the garbage collector, it can take 5 s to join
    gc.collect()


def test_no_train_split(tmp_path):
    dm = _folders_module(tmp_path, id_train=None)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="no in-distribution train split"):
        dm.train_dataloader()


def test_ood_set_may_not_be_called_id(tmp_path):
    dm = _folders_module(tmp_path, ood={"id": "ood_a"})
    with pytest.raises(ValueError, match="'id'"):
        dm.setup("test")


def test_digits_default():
    dm = OODDataModule(batch_size=256)
    dm.setup("fit")
    assert dm.id_name == "digits_0_4" and dm.groups == {}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (256, 3, 64, 64)


class _IndexRecorder(L.LightningModule):
    """Records which indices each test loader delivered, as a detector's test_step would see them."""

    def __init__(self):
        super().__init__()
        self.seen: dict[int, list[int]] = {}

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.setdefault(dataloader_idx, []).extend(batch["index"].tolist())


def test_lightning_trainer_runs_every_test_loader(tmp_path):
    dm = _folders_module(tmp_path)
    model = _IndexRecorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen == {0: list(range(8)), 1: list(range(7)), 2: list(range(3))}


# --- cached features for models that declare them ---------------------------------------------------------------

class _ChannelMeans(torch.nn.Module):
    """A stand-in frozen backbone: the per-channel means of an image, with the identity the cache is keyed by."""

    feature_dim = 3

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def identity(self) -> str:
        return f"channel_means x{self.scale}"

    def forward(self, images):
        return self.scale * images.mean((2, 3))


class _FeatureReader(L.LightningModule):
    """Records the keys and indices of the batches it gets; reads images only when asked to."""

    def __init__(self, features, images: bool):
        super().__init__()
        from ood_lightning.data import BatchInputs

        self.inputs = BatchInputs(images=images, features=tuple(features))
        self.seen: dict[int, list[dict]] = {}

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.setdefault(dataloader_idx, []).append(batch)


@pytest.mark.parametrize("images", [False, True])
def test_declared_features_are_served_with_images_only_when_read(tmp_path, images):
    from ood_lightning.data import CachedFeatures, FeatureInput

    dm = _folders_module(tmp_path)
    write_corrupt_files(tmp_path / "ood_a")  # three unreadable files beside its 7 images
    features = [FeatureInput(_ChannelMeans(), str(tmp_path / "cache")),
                FeatureInput(_ChannelMeans(2.0), str(tmp_path / "cache"))]
    assert features[0].key != features[1].key  # two backbones in one model never share a key
    model = _FeatureReader(features, images)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(model, datamodule=dm, verbose=False)
    ood_a = dm.test_sets["ood_a"]
    assert isinstance(ood_a, CachedFeatures) and ood_a.in_memory is not images  # features alone: no decoding
    batches = model.seen[1]
    keys = {features[0].key, features[1].key, "label", "index", "skipped"} | ({"image"} if images else set())
    assert all(set(batch) == keys for batch in batches)
    index = torch.cat([batch["index"] for batch in batches])
    first, second = (torch.cat([batch[f.key] for batch in batches]) for f in features)
    torch.testing.assert_close(second, 2 * first)
    assert len(index) == 7 and len(first) == 7
    skipped = torch.cat([batch["skipped"] for batch in batches]).tolist() + ood_a.skipped.tolist()
    assert len(set(skipped)) == 3  # the unreadable files: in the batches when images are read, else listed
    if images:
        torch.testing.assert_close(torch.cat([batch["image"] for batch in batches]).mean((2, 3)), first)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2 * 3  # one file per (set, backbone)


def test_a_model_of_images_gets_the_datasets_unchanged(tmp_path):
    dm = _folders_module(tmp_path)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(_IndexRecorder(), datamodule=dm, verbose=False)
    assert type(dm.test_sets["id"]).__name__ != "CachedFeatures" and not (tmp_path / "cache").exists()
