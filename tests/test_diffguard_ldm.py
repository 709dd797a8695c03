"""DiffGuard's classifier-free path: the DDIM tables against CompVis', inversion and reconstruction with a model that
is exact for its data (a Gaussian), the Grad-CAM mask and how it gates guidance, the null class of both back-ends,
and DiffGuardLDM end to end through the evaluator on tiny random models at 16 px (sklearn digits, 0-4 in
distribution, 5-9 OOD): batch-size independence, oracle labels, grids, start-up errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, DiTTransformer2DModel, UNet2DConditionModel,
                       VQModel)
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from diffguard_helpers import evaluate_args, run_evaluate, unlabelled_folders
from torch import nn

from ood_lightning.classifiers import build_classifier
from ood_lightning.ddim import (DDIMTable, alphas_cumprod_float32, ddim_invert, ddim_sample, leading_tables,
                                masked_guidance)
from ood_lightning.detectors.diffguard.ldm import DiffGuardLDM, LatentDiffusionParts, compvis_tables, save_ldm_parts
from ood_lightning.detectors.diffguard.ldm.cam import GradCAMMask, binarize, cam_target_layer, minmax_per_image
from ood_lightning.detectors.diffguard.ldm.latent_models import CompVisLDM, DiTModel, load_latent_model
from ood_lightning.noise import sample_seed

N = 6  # images per test set
NULL = 10  # the tiny models' null class: 10 real classes, as the CIFAR ResNet-20 predicts


# ------------------------------------------------------------------------------------------ DDIM tables
def compvis_alpha_bar() -> np.ndarray:
    """latent-diffusion's schedule in float64: betas = linspace(sqrt(0.0015), sqrt(0.0195), 1000)^2."""
    return np.cumprod(1 - np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2)


def row(table: DDIMTable, t: int) -> tuple[float, float]:
    """(the level epsilon is read at, the level moved to) of the table's step at timestep t."""
    i = table.timesteps.index(t)
    return float(table.alpha_bar[i]), float(table.alpha_bar_to[i])


def test_ddim_tables_are_compvis_ones_for_the_released_settings():
    inversion, sampling = compvis_tables()  # ldm-exp2.25: 25 steps, scaled_linear, offset 1, alpha_to_one False
    a = compvis_alpha_bar()
    assert inversion.timesteps == sampling.timesteps == tuple(1 + 40 * k for k in range(25)) == tuple(range(1, 962, 40))
    # inversion: the step at t moves from alpha-bar[t - 40] (alpha-bar[0] = 0.9985 before the first) to alpha-bar[t]
    np.testing.assert_allclose(row(inversion, 1), (0.9985, a[1]), rtol=1e-5)
    np.testing.assert_allclose(row(inversion, 41), (a[1], a[41]), rtol=1e-5)
    np.testing.assert_allclose(row(inversion, 961), (a[921], a[961]), rtol=1e-5)
    # sampling walks the same pairs back and ends at alpha-bar[0], not 1
    np.testing.assert_allclose(row(sampling, 961), (a[961], a[921]), rtol=1e-5)
    np.testing.assert_allclose(row(sampling, 1), (a[1], 0.9985), rtol=1e-5)
    assert a[961] == pytest.approx(2.948e-4, rel=1e-3)
    assert row(compvis_tables(set_alpha_to_one=True)[1], 1)[1] == 1.0
    with pytest.raises(ValueError, match="must divide"):
        compvis_tables(30)


@pytest.mark.parametrize("settings, clip", [
    (dict(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, steps_offset=1, set_alpha_to_one=False),
     False),  # CompVis' sampler, as DiffGuardLDM runs it
    (dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, steps_offset=0, set_alpha_to_one=True), True),
])  # diffusers' defaults with clipping, as the training grids sample
@pytest.mark.parametrize("steps", [8, 25])
def test_table_steps_are_diffusers_ddim_steps_bit_for_bit(settings, clip, steps):
    """The LDM scores and training grids were computed with diffusers' DDIM(Inverse)Scheduler; the tables and
    their step reproduce those numbers exactly, not merely to rounding."""
    config = dict(num_train_timesteps=1000, prediction_type="epsilon", timestep_spacing="leading", **settings)
    inverse, sampler = DDIMInverseScheduler(**config, clip_sample=False), DDIMScheduler(**config, clip_sample=clip)
    inverse.set_timesteps(steps)
    sampler.set_timesteps(steps)
    alpha_bar = alphas_cumprod_float32(settings["beta_schedule"], settings["beta_start"], settings["beta_end"], 1000)
    first = 1.0 if settings["set_alpha_to_one"] else alpha_bar[0]
    inversion, sampling = leading_tables(alpha_bar, steps, settings["steps_offset"], first)
    assert list(inversion.timesteps) == inverse.timesteps.tolist() == sampler.timesteps.tolist()[::-1]
    g = torch.Generator().manual_seed(0)
    theirs = ours = torch.randn(2, 3, 8, 8, generator=g)
    for i, t in enumerate(inversion.timesteps):
        eps = torch.randn(2, 3, 8, 8, generator=g)
        theirs, ours = inverse.step(eps, t, theirs).prev_sample, inversion.step(i, ours, eps)
        assert torch.equal(theirs, ours), t
    for i in reversed(range(len(sampling))):
        eps = 3 * torch.randn(2, 3, 8, 8, generator=g)  # large enough that clipping x0 matters
        theirs = sampler.step(eps, sampling.timesteps[i], theirs).prev_sample
        ours = sampling.step(i, ours, eps, clip)
        assert torch.equal(theirs, ours), sampling.timesteps[i]


# ------------------------------------------------------------------------ inversion and re-synthesis
def gaussian_eps(mu: torch.Tensor, s: float, alpha_bar: torch.Tensor, seen: list | None = None):
    """The exact epsilon-predictor for latents ~ N(mu, s^2 I) at every training timestep: it ignores the label
    (and records it in `seen`)."""
    def eps(z, t, labels):
        if seen is not None:
            seen.append(labels.tolist())
        a = float(alpha_bar[t])
        return math.sqrt(1 - a) * (z - math.sqrt(a) * mu) / (a * s * s + 1 - a)
    return eps


def test_inversion_follows_the_exact_flow_and_unconditional_reconstruction_returns_the_latent():
    """For latents ~ N(mu, s^2 I) the probability-flow ODE is known in closed form: from level a0 to a1 it maps
    x to sqrt(a1) mu + sigma(a1) / sigma(a0) (x - sqrt(a0) mu), sigma(a) = sqrt(a s^2 + 1 - a). DDIM follows it up
    to its first-order discretisation error, which shrinks with the step count."""
    s = 0.5
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(1, 3, 8, 8, generator=g) * 2 - 1) * 0.5
    z = mu + s * torch.randn(6, 3, 8, 8, generator=g)
    spread = (z - mu).abs().mean((1, 2, 3))
    nowhere = torch.zeros(6, 1, 8, 8, dtype=torch.bool)  # an empty mask: unconditional everywhere
    bounds = {25: (0.08, 0.15), 100: (0.025, 0.035)}  # measured: (0.062, 0.120) and (0.018, 0.029)
    for steps, (latent_bound, reconstruction_bound) in bounds.items():
        inversion, sampling = compvis_tables(steps)
        alpha_bar = alphas_cumprod_float32("scaled_linear", 0.0015, 0.0195, 1000).double()
        seen = []
        eps = gaussian_eps(mu, s, alpha_bar, seen)
        latent = ddim_invert(eps, z, inversion, torch.full((6,), NULL))
        assert seen == [[NULL] * 6] * steps  # the null class throughout
        a0, a1 = float(alpha_bar[0]), float(alpha_bar[inversion.timesteps[-1]])

        def sigma(a):
            return math.sqrt(a * s * s + 1 - a)
        exact = math.sqrt(a1) * mu + sigma(a1) / sigma(a0) * (z - math.sqrt(a0) * mu)
        latent_error = (latent - exact).abs().mean((1, 2, 3)) / exact.abs().mean((1, 2, 3))
        assert (latent_error < latent_bound).all(), latent_error
        assert ((latent - z).abs().mean((1, 2, 3)) > spread).all()  # the latent is far from the input
        rec = ddim_sample(eps, latent, sampling, torch.arange(6), NULL, 10.0, nowhere)
        assert seen[steps:] == [[NULL] * 6 + list(range(6))] * steps  # one call: [unconditional, conditional]
        reconstruction_error = (rec - z).abs().mean((1, 2, 3)) / spread
        assert (reconstruction_error < reconstruction_bound).all(), reconstruction_error
        assert (torch.cdist(rec.flatten(1), z.flatten(1)).argmin(1) == torch.arange(6)).all()


def test_the_mask_gates_guidance_pointwise():
    """With a model that acts on each latent cell alone, cells inside the mask follow the guided trajectory and
    cells outside exactly the unconditional one."""
    _, sampling = compvis_tables(10)

    def eps(z, t, labels):  # conditional and unconditional predictions differ by a label-dependent shift
        return 0.3 * z + 0.05 * labels.view(-1, 1, 1, 1).float() + t / 1000

    g = torch.Generator().manual_seed(0)
    latent = torch.randn(3, 3, 8, 8, generator=g)
    labels = torch.tensor([0, 4, 7])
    mask = torch.rand(3, 1, 8, 8, generator=g) > 0.5
    masked = ddim_sample(eps, latent, sampling, labels, NULL, 10.0, mask)
    guided = ddim_sample(eps, latent, sampling, labels, NULL, 10.0, None)
    unconditional = ddim_sample(eps, latent, sampling, torch.full_like(labels, NULL), NULL, 10.0, None)
    inside = mask.expand_as(latent)
    assert torch.equal(masked[inside], guided[inside])
    assert torch.equal(masked[~inside], unconditional[~inside])
    assert (guided - unconditional).abs().min() > 0.1


@pytest.fixture(scope="module")
def tiny_ldm_parts():
    torch.manual_seed(0)
    vae = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=3, num_vq_embeddings=32, vq_embed_dim=3, norm_num_groups=4, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=1, flip_sin_to_cos=True, freq_shift=0)
    return LatentDiffusionParts(vae.eval(), unet.eval(), nn.Embedding(NULL + 1, 8), NULL)


@pytest.fixture(scope="module")
def ldm_dir(tiny_ldm_parts, tmp_path_factory):
    return save_ldm_parts(tiny_ldm_parts, tmp_path_factory.mktemp("tiny_ldm"))


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    """A DiTPipeline-style folder: a 2-layer DiT on 8x8x4 latents (null class 1000) and a KL-f2 autoencoder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_dit")
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                          norm_num_groups=4, sample_size=8, patch_size=2, num_embeds_ada_norm=1000
                          ).save_pretrained(folder / "transformer")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=16).save_pretrained(folder / "vae")
    return folder


def test_each_step_uses_the_guided_eps_inside_the_mask_on_a_tiny_ldm(tiny_ldm_parts, monkeypatch):
    model = CompVisLDM(tiny_ldm_parts)
    _, sampling = compvis_tables(2)
    g = torch.Generator().manual_seed(1)
    latent, labels = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 8])
    mask = torch.rand(2, 1, 8, 8, generator=g) > 0.5
    used = []
    step = DDIMTable.step

    def recording_step(table, i, z, eps, clip=False):
        used.append((table.timesteps[i], eps, z))
        return step(table, i, z, eps, clip)

    monkeypatch.setattr(DDIMTable, "step", recording_step)
    with torch.no_grad():
        ddim_sample(model.eps, latent, sampling, labels, NULL, 10.0, mask)
        for t, eps, z in used:
            eps_u, eps_c = model.eps(z, t, torch.full_like(labels, NULL)), model.eps(z, t, labels)
            inside = mask.expand_as(z)
            torch.testing.assert_close(eps[inside], (eps_u + 10.0 * (eps_c - eps_u))[inside])
            torch.testing.assert_close(eps[~inside], eps_u[~inside])
            assert (eps_c - eps_u).abs().max() > 1e-3
    assert [t for t, _, _ in used] == [501, 1]
    torch.testing.assert_close(masked_guidance(torch.zeros(2), torch.ones(2), 3.0, torch.tensor([True, False])),
                               torch.tensor([3.0, 0.0]))


# ------------------------------------------------------------------------------------- the null class
def test_ldm_null_class_is_the_last_embedding_row(ldm_dir, tiny_ldm_parts):
    model = load_latent_model(ldm_dir)
    assert isinstance(model, CompVisLDM) and model.null_class == NULL and model.num_classes == NULL
    z = torch.randn(2, 3, 8, 8)
    null_context = tiny_ldm_parts.class_embedding.weight[-1].expand(2, 1, -1)
    with torch.no_grad():
        expected = tiny_ldm_parts.unet(z, torch.tensor([300, 300]), encoder_hidden_states=null_context).sample
        torch.testing.assert_close(model.eps(z, 300, torch.full((2,), NULL)), expected)
    assert model.latent_shape(16) == (3, 8, 8)


def test_a_compvis_checkpoint_file_is_converted_on_load_and_reproduces_the_original(shared_dir):
    """The ldm_cin fixture: a tiny model in cin256-v2's model.ckpt layout, 10 classes + null, with the original
    code's outputs."""
    io = torch.load(shared_dir / "fixtures" / "ldm_cin.io.pt")
    model = load_latent_model(shared_dir / "fixtures" / "ldm_cin.ckpt")
    assert isinstance(model, CompVisLDM) and model.null_class == 10 and 10 in io["y"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(io["image"]), io["latent_h"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode(io["latent_h"]), io["decoded"], atol=1e-4, rtol=0)
        for b in range(len(io["z"])):
            eps = model.eps(io["z"][b:b + 1], int(io["t"][b]), io["y"][b:b + 1])
            torch.testing.assert_close(eps, io["eps"][b:b + 1], atol=1e-4, rtol=0)
    assert model.latent_shape(256) == (3, 64, 64)


def test_dit_null_class_comes_from_its_config_and_eps_is_the_first_channels(dit_dir):
    model = load_latent_model(dit_dir)
    assert isinstance(model, DiTModel) and model.null_class == 1000 and model.num_classes == 1000
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = model.transformer(z, timestep=torch.tensor([300, 300]), class_labels=torch.tensor([1000, 1000])).sample
        assert out.shape[1] == 8
        torch.testing.assert_close(model.eps(z, 300, torch.tensor([1000, 1000])), out[:, :4])
        assert not torch.allclose(model.eps(z, 300, torch.tensor([0, 0])), out[:, :4])
        images = torch.rand(2, 3, 16, 16) * 2 - 1
        mean = model.vae.encode(images).latent_dist.mean
        torch.testing.assert_close(model.encode(images), mean * 0.18215)
    assert model.latent_shape(16) == (4, 8, 8)
    with pytest.raises(ValueError, match="16 px"):
        model.latent_shape(32)


def test_missing_model_paths_name_the_path_and_what_belongs_there(tmp_path, dit_dir):
    with pytest.raises(FileNotFoundError, match=r"nowhere/model\.ckpt.*cin256-v2.*DiTPipeline"):
        load_latent_model(tmp_path / "nowhere" / "model.ckpt")
    (tmp_path / "dit" / "transformer").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"vae/config\.json"):
        load_latent_model(tmp_path / "dit")


# -------------------------------------------------------------------------------------- Grad-CAM mask
def test_minmax_and_cut_semantics():
    cam = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    scaled = minmax_per_image(cam)
    torch.testing.assert_close(scaled[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert (scaled[1] == 0).all()  # a flat map guides nowhere
    assert binarize(scaled[0], 0.3).tolist() == [[False, False], [True, True]]
    assert binarize(scaled[0], 0.5).tolist() == [[False, False], [False, True]]  # strictly above the cut
    assert binarize(scaled[0], -0.3).tolist() == [[True, True], [False, False]]  # negative: below |cut|


def test_cam_layers_are_the_last_conv_blocks():
    resnet50 = build_classifier("resnet50", None)
    assert cam_target_layer(resnet50) is resnet50.net.layer4[-1]
    resnet20 = build_classifier("cifar_resnet20", None)
    assert cam_target_layer(resnet20) is resnet20.net.layer3[-1]
    densenet = build_classifier("cifar_densenet_bc100", None)
    assert cam_target_layer(densenet) is densenet.net.encoder.bn1


def test_grad_cam_mask_is_the_label_logits_cam_min_maxed_and_nearest_resized():
    torch.manual_seed(0)
    classifier = build_classifier("cifar_resnet20", None, num_classes=10)
    images, labels = torch.rand(3, 3, 16, 16), torch.tensor([2, 5, 9])
    # Grad-CAM by hand: gradients of the label logit at layer3[-1], spatially averaged, ReLU, bilinear up, min-max
    layer = classifier.net.layer3[-1]
    acts = []
    handle = layer.register_forward_hook(lambda m, i, o: acts.append(o))
    x = images.clone().requires_grad_()
    logits = classifier(x)
    handle.remove()
    (grads,) = torch.autograd.grad(logits[torch.arange(3), labels].sum(), acts[0])
    cam = F.relu((grads.mean((2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)[:, 0].detach()
    expected = minmax_per_image(cam)
    masker = GradCAMMask(classifier, cut=0.3)
    with torch.no_grad():  # as under Lightning's test loop without inference mode
        heat = masker.heatmap(images, labels)
        mask = masker(images, labels, (8, 8))
    torch.testing.assert_close(heat, expected, atol=1e-4, rtol=0)
    peaks = heat.amax((1, 2))
    assert heat.min() >= 0 and (peaks > 0).sum() >= 2  # a random net may see no positive evidence for a label
    torch.testing.assert_close(peaks[peaks > 0], torch.ones(int((peaks > 0).sum())))
    assert mask.shape == (3, 1, 8, 8) and torch.equal(mask[:, 0], binarize(heat, 0.3)[:, ::2, ::2])
    torch.testing.assert_close(masker.heatmap(images[1:2], labels[1:2]), heat[1:2])  # per image
    assert all(p.grad is None for p in classifier.parameters())
    # the library's own normalisation gives the same map
    library = GradCAM(model=classifier, target_layers=[layer])
    stock = library(images.clone().requires_grad_(), [ClassifierOutputTarget(int(k)) for k in labels])
    library.activations_and_grads.release()
    torch.testing.assert_close(heat, torch.from_numpy(stock), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ end to end
def _args(model_dir, out, batch_size, **model):
    init = {"diffusion_model": str(model_dir), "classifier": "cifar_resnet20", "classifier_weights": None,
            "num_classes": 10, "image_size": 16, "num_steps": 10, "similarities": ["l2", "psnr", "logits_l1"],
            "grid_images": 4, **model}
    return evaluate_args("ood_lightning.detectors.diffguard.ldm.DiffGuardLDM", init, out, batch_size, N) + [
        "--results_dir", str(out)]


def _scores(out):
    def load(name):
        with np.load(out / "scores" / f"{name}.npz") as f:
            return {key: f[key] for key in f.files}
    return {name: load(name) for name in ("id", "digits_5_9")}


@pytest.fixture(scope="module")
def runs(ldm_dir, tmp_path_factory):
    out = {}
    for batch_size in (1, 4):
        folder = tmp_path_factory.mktemp(f"ldm_b{batch_size}")
        run_evaluate(_args(ldm_dir, folder, batch_size))
        out[batch_size] = folder
    return out


def test_scores_do_not_depend_on_batch_size(runs):
    one, four = _scores(runs[1]), _scores(runs[4])
    for name in ("id", "digits_5_9"):
        assert len(one[name]["index"]) == N
        for key in ("l2", "psnr", "logits_l1"):
            np.testing.assert_allclose(one[name][f"score_{key}"], four[name][f"score_{key}"], rtol=1e-4, atol=1e-5,
                                       err_msg=key)
        for key in ("extra_prediction", "extra_target", "extra_cam_area"):
            np.testing.assert_array_equal(one[name][key], four[name][key])
        np.testing.assert_array_equal(one[name]["extra_target"], one[name]["extra_prediction"])
        assert np.isfinite(one[name]["score_l2"]).all() and (one[name]["score_l2"] > 0).all()
    areas = np.concatenate([r["extra_cam_area"] for r in one.values()])
    assert ((areas >= 0) & (areas <= 1)).all() and len(set(areas.tolist())) > 1
    for name in ("id", "digits_5_9"):
        assert (runs[4] / "grids" / f"{name}.png").is_file()


def test_oracle_without_cam_guides_id_to_the_true_label_and_ood_to_a_seeded_random_label(ldm_dir, tmp_path):
    run_evaluate(_args(ldm_dir, tmp_path, 4, oracle=True, use_cam=False, seed=3))
    scores = _scores(tmp_path)
    np.testing.assert_array_equal(scores["id"]["extra_target"], scores["id"]["label"])
    ood = scores["digits_5_9"]
    seeds = [sample_seed(3, "digits_5_9/oracle", i) for i in ood["index"].tolist()]
    expected = [int(torch.randint(10, (), generator=torch.Generator().manual_seed(s))) for s in seeds]
    np.testing.assert_array_equal(ood["extra_target"], expected)
    assert (ood["extra_cam_area"] == 1).all()  # guidance everywhere


def test_oracle_refuses_an_in_distribution_set_without_labels(ldm_dir, tmp_path):
    """Without labels the oracle has no true label to guide in-distribution images toward (the class embedding
    would be indexed with NO_LABEL): it stops and says what to change."""
    args = _args(ldm_dir, tmp_path / "out", 4, oracle=True, use_cam=False) + unlabelled_folders(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)images without one .*one subfolder per class.*oracle false"):
        run_evaluate(args)


@pytest.mark.parametrize("reference, use_cam", [("unguided", True), ("input", False)])
def test_reported_passes_are_the_passes_made(dit_dir, reference, use_cam):
    """unet_evals counts the image rows the diffusion model was called on, per image (the cascade's cost report)."""
    detector = DiffGuardLDM(diffusion_model=str(dit_dir), classifier="cifar_resnet20", classifier_weights=None,
                            num_classes=10, image_size=16, num_steps=4, beta_schedule="linear", beta_start=1e-4,
                            beta_end=0.02, reference=reference, use_cam=use_cam, similarities=["l2"], grid_images=0)
    rows = []
    eps = detector.latent_model.eps
    detector.latent_model.eps = lambda x, *args: rows.append(len(x)) or eps(x, *args)
    batch = {"image": torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)), "index": torch.arange(3),
             "label": torch.zeros(3, dtype=torch.long)}
    scores = detector.score(batch, "id")
    assert scores["unet_evals"].tolist() == [sum(rows) / 3] * 3
    assert scores["classifier_evals"].tolist() == [2.0 if use_cam else 1.0] * 3


def test_the_unguided_twin_is_the_plain_unconditional_resynthesis(dit_dir):
    """reference: unguided compares the guided synthesis with the plain unconditional DDIM re-synthesis from the same
    latent (the reference's uncond_aux): a twin guided toward the target like the synthesis would score 0."""
    detector = DiffGuardLDM(diffusion_model=str(dit_dir), classifier="cifar_resnet20", classifier_weights=None,
                            num_classes=10, image_size=16, num_steps=10, beta_schedule="linear", beta_start=1e-4,
                            beta_end=0.02, reference="unguided", similarities=["l2"], grid_images=0)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(3, 3, 16, 16, generator=g), "index": torch.arange(3),
             "label": torch.zeros(3, dtype=torch.long)}
    scores = detector.score(batch, "id")

    model, null = detector.latent_model, detector.latent_model.null_class
    images = batch["image"]
    with torch.no_grad():
        target = detector.classifier(images).argmax(-1)
        latents = ddim_invert(model.eps, model.encode(images * 2 - 1), detector.inversion_table,
                              torch.full_like(target, null))
    mask = detector.cam_mask(images, target, tuple(latents.shape[-2:]))
    with torch.no_grad():
        table = detector.resynthesis_table
        synthesis = ddim_sample(model.eps, latents, table, target, null, 10.0, mask)
        twin = latents
        for i in reversed(range(len(table))):  # plain DDIM with the null class: no guidance at all
            twin = table.step(i, twin, model.eps(twin, table.timesteps[i], torch.full_like(target, null)))
        expected = ((model.decode(synthesis) + 1) / 2 - (model.decode(twin) + 1) / 2).flatten(1).norm(dim=1)
    assert mask.any() and (expected > 1e-3).all()  # the guidance moved every synthesis away from its twin
    torch.testing.assert_close(scores["l2"], expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(scores["target"], target) and torch.equal(scores["prediction"], target)


def test_inference_mode_is_refused_with_the_fix(ldm_dir, tmp_path):
    args = _args(ldm_dir, tmp_path, 4)
    args[args.index("--trainer.inference_mode") + 1] = "true"
    with pytest.raises(RuntimeError, match="inference_mode: false"):
        run_evaluate(args)


def test_wrong_image_size_and_too_many_classes_fail_before_work(ldm_dir, dit_dir):
    common = dict(classifier="cifar_resnet20", classifier_weights=None, similarities=["l2"])
    with pytest.raises(ValueError, match="16 px"):
        DiffGuardLDM(diffusion_model=str(dit_dir), image_size=256, num_classes=10, **common)
    with pytest.raises(ValueError, match="classifier predicts 12 classes"):
        DiffGuardLDM(diffusion_model=str(ldm_dir), image_size=16, num_classes=12, **common)
    detector = DiffGuardLDM(diffusion_model=str(ldm_dir), image_size=32, num_classes=10, **common)
    batch = {"image": torch.rand(2, 3, 16, 16), "index": torch.arange(2), "label": torch.zeros(2, dtype=torch.long)}
    with pytest.raises(ValueError, match="center_crop to 32"):
        detector.score(batch, "id")
