"""DiffGuard GDM arithmetic: the respaced schedule, inversion with adaptive early stop, masked re-synthesis, cutouts
and Clean Grad guidance, checked with a diffusion model that is exact for its data (a Gaussian)."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from ood_lightning.detectors.diffguard.gdm.guidance import CleanGradGuidance, Cutouts
from ood_lightning.detectors.diffguard.gdm.inversion import invert
from ood_lightning.detectors.diffguard.gdm.respacing import respaced_tables
from ood_lightning.detectors.diffguard.gdm.resynthesis import resynthesize

INVERSION, RESYNTHESIS = respaced_tables(100)


def gaussian_eps(mu: torch.Tensor, s: float):
    """The exact epsilon-predictor for data ~ N(mu, s^2 I): E[eps | x_t] at every noise level."""
    def eps(x, k, rows):
        a = float(INVERSION.alpha_bar[k])
        return math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * s * s + 1 - a)
    return eps


def test_ddim100_tables_match_guided_diffusion_and_diffusers():
    for table in (INVERSION, RESYNTHESIS):
        assert table.timesteps == tuple(range(0, 1000, 10))
        assert table.alpha_bar.dtype == torch.float64
    full = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert float(INVERSION.alpha_bar[0]) == pytest.approx(0.9999)
    assert float(INVERSION.alpha_bar[37]) == pytest.approx(full[370], rel=1e-12)
    assert float(INVERSION.alpha_bar_to[36]) == float(INVERSION.alpha_bar[37])  # up one level
    assert float(RESYNTHESIS.alpha_bar_to[38]) == float(RESYNTHESIS.alpha_bar[37])  # down one level
    assert float(RESYNTHESIS.alpha_bar_to[0]) == 1.0 and float(INVERSION.alpha_bar_to[99]) == 0.0
    ddim = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                         set_alpha_to_one=True, steps_offset=0)
    ddim.set_timesteps(100)
    assert ddim.timesteps.tolist() == list(INVERSION.timesteps[::-1])
    theirs = ddim.alphas_cumprod[ddim.timesteps.flip(0)].double().numpy()
    np.testing.assert_allclose(INVERSION.alpha_bar.numpy(), theirs, rtol=1e-5)
    assert respaced_tables(250)[0].timesteps[1] == 4
    with pytest.raises(ValueError, match="evenly strided"):
        respaced_tables(999)


@pytest.mark.parametrize("s, mu_scale, clip", [(0.5, 0.0, False), (0.25, 0.4, True)])
def test_inversion_then_unguided_reconstruction_returns_the_input(s, mu_scale, clip):
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(1, 3, 8, 8, generator=g) * 2 - 1) * mu_scale
    x = mu + s * torch.randn(6, 3, 8, 8, generator=g)
    if clip:
        x = x.clamp(-1, 1)
    eps = gaussian_eps(mu, s)
    latent, stop = invert(eps, x, INVERSION, 90, clip=clip)
    assert stop.tolist() == [89] * 6
    for offset in (0, 1):  # 1: the released start, one step above the latent's level
        rec = resynthesize(eps, latent, stop + 1 + offset, RESYNTHESIS, clip=clip)
        err = (rec - x).abs().mean((1, 2, 3))
        spread = (x - mu).abs().mean((1, 2, 3))
        assert (err < 0.15 * spread).all(), (err, spread)
        assert ((latent - x).abs().mean((1, 2, 3)) > 5 * err).all()  # the latent is far from the input
        assert (torch.cdist(rec.flatten(1), x.flatten(1)).argmin(1) == torch.arange(6)).all()


def test_early_stop_freezes_each_sample_at_its_first_crossing():
    g = torch.Generator().manual_seed(1)
    mu = torch.zeros(1, 3, 8, 8)
    x = torch.randn(5, 3, 8, 8, generator=g) * torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8]).view(5, 1, 1, 1)
    eps = gaussian_eps(mu, 0.5)

    def psnr(a, b):
        return 10 * torch.log10(1 / (((a - b) / 2) ** 2).flatten(1).mean(1))

    trajectory = []  # latents of every sample after each step, with no stop (the rule is not asked after the last)
    final, _ = invert(eps, x, INVERSION, 90, stop_fn=lambda lat, inp, rows: (trajectory.append(lat.clone()),
                                                                          torch.zeros(len(lat), dtype=torch.bool))[1])
    trajectory.append(final)
    values = torch.stack([psnr(lat, x) for lat in trajectory])  # [steps, B]
    threshold = float(values[30].median())  # samples cross it at different steps
    crossings = [(values[:, b] < threshold).nonzero().squeeze(1) for b in range(5)]
    expected = [int(c[0]) if len(c) else 89 for c in crossings]  # never crossing: the full depth
    assert len(set(expected)) > 2

    seen_rows = []

    def counting_eps(x_rows, k, rows):
        seen_rows.append(rows.tolist())
        return eps(x_rows, k, rows)

    latent, stop = invert(counting_eps, x, INVERSION, 90, stop_fn=lambda lat, inp, rows: psnr(lat, inp) < threshold)
    assert stop.tolist() == expected
    for b, i in enumerate(expected):
        torch.testing.assert_close(latent[b], trajectory[i][b])
        assert sum(b in rows for rows in seen_rows) == i + 1  # a stopped sample costs no more model calls
    assert len(seen_rows) == max(expected) + 1  # the loop ends when every sample has stopped or at max_steps


def test_masked_resynthesis_equals_one_sample_at_a_time():
    g = torch.Generator().manual_seed(2)
    mu = torch.zeros(1, 3, 8, 8)
    eps = gaussian_eps(mu, 0.5)
    latent = torch.randn(4, 3, 8, 8, generator=g)
    start = torch.tensor([12, 40, 3, 40])
    calls = []

    def counting_eps(x_rows, k, rows):
        calls.append((k, rows.tolist()))
        return eps(x_rows, k, rows)

    batched = resynthesize(counting_eps, latent, start, RESYNTHESIS)
    for k, rows in calls:
        assert rows == [b for b in range(4) if start[b] >= k]
    for b in range(4):
        alone = resynthesize(eps, latent[b:b + 1], start[b:b + 1], RESYNTHESIS)
        torch.testing.assert_close(batched[b:b + 1], alone)
    with pytest.raises(ValueError, match="start indices"):
        resynthesize(eps, latent, torch.tensor([0, 1, 2, 100]), RESYNTHESIS)


def test_cutouts_are_reproducible_nearest_resized_and_vary_by_step():
    image = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)
    a, b = Cutouts(count=8, cut_size=32, seed=100), Cutouts(count=8, cut_size=32, seed=100)
    assert a.geometry(5, 40) == b.geometry(5, 40)
    assert a.geometry(0, 40) != a.geometry(1, 40)
    assert Cutouts(count=8, cut_size=32, seed=7).geometry(0, 40) != a.geometry(0, 40)
    for size, top, left in a.geometry(3, 40):
        assert 32 <= size < 40 and 0 <= top <= 40 - size and 0 <= left <= 40 - size
    crops, owner = a(image, torch.tensor([3, 3]))
    assert crops.shape == (16, 3, 32, 32)
    assert owner.tolist() == [0, 1] * 8
    assert set(crops[0].unique().tolist()) <= set(image[0].unique().tolist())  # nearest: no new values
    size, top, left = a.geometry(3, 40)[0]
    assert crops[0, 0, 0, 0] == image[0, 0, top, left]
    # a sample's crops depend on its own step count only, not on its neighbours
    mixed, mixed_owner = a(image, torch.tensor([3, 0]))
    torch.testing.assert_close(mixed[mixed_owner == 0], crops[owner == 0])
    whole, owner = Cutouts(count=0)(image, torch.tensor([0, 0]))
    assert whole is image and owner.tolist() == [0, 1]


class MeanBrightness(nn.Module):
    """A two-class classifier: class 0 = bright, class 1 = dark."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(8.0))

    def forward(self, x):
        m = x.mean((1, 2, 3)) - 0.5
        return torch.stack([self.w * m, -self.w * m], 1)


def test_clean_grad_is_the_classifier_gradient_at_the_blend_and_skips_the_unet():
    torch.manual_seed(0)
    unet = nn.Conv2d(3, 3, 3, padding=1)
    classifier = MeanBrightness()
    x_t = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        eps = unet(x_t)
    a = float(INVERSION.alpha_bar[40])
    x0_raw = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    labels, guided = torch.tensor([0, 1, 1]), torch.tensor([True, True, False])
    g = CleanGradGuidance(classifier, scale=3.0)(x_t, x0_raw, a, labels, torch.zeros(3, dtype=torch.long), guided)
    fac = math.sqrt(1 - a)
    blend = (fac * x0_raw + (1 - fac) * x_t).requires_grad_()
    log_p = torch.log_softmax(classifier((blend + 1) / 2), -1)
    (expected,) = torch.autograd.grad(log_p[0, 0] + log_p[1, 1], blend)
    torch.testing.assert_close(g[:2], 3.0 * expected[:2])
    assert (g[2] == 0).all()  # unguided row
    assert all(p.grad is None for p in unet.parameters())
    assert classifier.w.grad is None
    at_xt = CleanGradGuidance(classifier, scale=3.0, use_x0=False)(x_t, x0_raw, a, labels, torch.zeros(3).long(),
                                                                  guided)
    assert not torch.allclose(at_xt[:2], g[:2])


def test_guidance_pulls_the_synthesis_toward_the_target_label():
    g = torch.Generator().manual_seed(3)
    mu = torch.zeros(1, 3, 8, 8)
    eps = gaussian_eps(mu, 0.3)
    x = (0.3 * torch.randn(4, 3, 8, 8, generator=g)).clamp(-1, 1)
    latent, stop = invert(eps, x, INVERSION, 40)
    start = stop + 2
    classifier = MeanBrightness()
    guidance = CleanGradGuidance(classifier, scale=3.0, cutouts=Cutouts(count=4, cut_size=6, seed=100))

    def synth(label):
        labels = torch.full((4,), label)
        return resynthesize(eps, latent, start, RESYNTHESIS,
                            guide=lambda x_t, x0, a, rows, steps: guidance(x_t, x0, a, labels[rows], steps))

    plain = resynthesize(eps, latent, start, RESYNTHESIS)
    with torch.no_grad():
        p_plain = torch.softmax(classifier((plain + 1) / 2), -1)
        for label in (0, 1):
            p = torch.softmax(classifier((synth(label) + 1) / 2), -1)
            assert (p[:, label] > p_plain[:, label] + 0.05).all(), (label, p[:, label], p_plain[:, label])
