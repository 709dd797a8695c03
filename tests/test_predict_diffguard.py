"""predict.py on DiffGuard (issue 17): the contact sheet shows, under each image, the re-synthesis DiffGuard compared
it with, taken from the scoring pass itself (no second run). A tiny random pixel UNet at 16 px, four images."""
import numpy as np
import yaml
from data_helpers import make_flat
from diffguard_helpers import save_tiny_unet
from PIL import Image

import predict
from ood_lightning.cli import make_cli
from ood_lightning.data.datamodule import collate
from ood_lightning.detectors.base import OODDetector
from ood_lightning.prediction.images import ImageInputs
from ood_lightning.prediction.outputs import CAPTION, LABEL, TILE
from ood_lightning.prediction.scoring import thumbnail

SHOWN = 2  # images per contact-sheet row


def _config(tmp_path):
    init = {"diffusion_model": str(save_tiny_unet(tmp_path / "unet")), "classifier": "cifar_resnet20",
            "classifier_weights": None, "num_classes": 10, "num_steps": 4, "max_inversion_steps": 2,
            "stop_psnr": 14.0, "stop_dists_similarity": None, "cutouts": 0, "cutout_size": 12,
            "similarities": ["l2"], "reference": "input"}
    config = {"seed_everything": 0, "model": {"class_path": "ood_lightning.detectors.diffguard.gdm.DiffGuardGDM",
                                              "init_args": init},
              "trainer": {"accelerator": "cpu", "inference_mode": False, "enable_progress_bar": False},
              "data": {"image_size": 16, "batch_size": 4}}
    path = tmp_path / "gdm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_contact_sheet_shows_diffguards_synthesis_under_each_image(tmp_path):
    images = make_flat(tmp_path / "images", n=4, size=(16, 16))
    out = tmp_path / "out"
    result = predict.main(["--config", str(_config(tmp_path)), "--images", str(images), "--out_dir", str(out),
                           "--sheet_images", str(SHOWN)])
    values = result["scores"]["l2"]
    shown = {"most OOD": np.argsort(-values, kind="stable")[:SHOWN],
             "most ID": np.argsort(-values, kind="stable")[::-1][:SHOWN]}
    positions = {int(result["index"][k]) for picks in shown.values() for k in picks}
    assert set(result["pictures"]) == positions  # only the shown images' pictures are kept
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    section = CAPTION + TILE + CAPTION + LABEL + TILE  # one picture row: the synthesis
    assert sheet.shape == (2 * section, SHOWN * TILE, 3)
    files = sorted(images.glob("*.png"))
    for s, picks in enumerate(shown.values()):
        top = s * section + CAPTION + TILE + CAPTION + LABEL
        for column, k in enumerate(picks):
            synthesis = result["pictures"][int(result["index"][k])]["synthesis"]
            assert synthesis.shape == (16, 16, 3) and synthesis.dtype == np.uint8
            tile = sheet[top:top + TILE, column * TILE:(column + 1) * TILE]
            np.testing.assert_array_equal(tile, np.kron(synthesis, np.ones((7, 7, 1), dtype=np.uint8)))  # 16 -> 112
            original = np.asarray(Image.open(files[int(result["index"][k])]).convert("RGB"))
            assert np.abs(synthesis.astype(int) - original).mean() > 1  # a synthesis, not the input again
    # the pictures are the detector's synthesis of those images, as scoring one of them alone gives it
    cli = make_cli(["--config", str(tmp_path / "gdm.yaml"), "--trainer.logger", "false"], "test",
                   model_class=OODDetector)
    position = min(positions)
    cli.model.eval()
    cli.model.score_images(collate([ImageInputs([files[position]], cli.datamodule.transform)[0]]))
    expected = thumbnail(cli.model.pictures["synthesis"][0])
    assert np.abs(expected.astype(int) - result["pictures"][position]["synthesis"]).max() <= 1
