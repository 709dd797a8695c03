"""Schedule tables, training loss and the reference / consistent reconstruction loops."""
import math

import pytest
import torch
from torch.nn import functional as F

from ood_lightning.detectors.lfdn.diffusion import LFDNSchedule, ddim_sigma, reconstruct, reconstruct_noise_count
from ood_lightning.detectors.lfdn.network import LFDN

# Values printed in the LFDN reference's schedule and sampler description (docs/lfdn.md (Schedule and
# reconstruction); not computed by our code).
SPEC_ALPHAS_CUMPROD = {0: 0.9985, 1: 0.996922, 2: 0.995265, 3: 0.993527, 49: 0.80713, 99: 0.41175}
SPEC_SIGMA = {3: 0.03287, 2: 0.02775, 1: 0.0}


@pytest.fixture(scope="module")
def schedule():
    return LFDNSchedule()


def small_model(seed=0, dim=12):
    torch.manual_seed(seed)
    model = LFDN(in_dim=dim, hidden_dim=24, num_blocks=2).eval()
    for p in model.parameters():  # non-zero output layers, so the network actually does something
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_schedule_tables_match_spec(schedule):
    assert schedule.betas.dtype == torch.float32 and schedule.alphas_cumprod.shape == (100,)
    assert schedule.betas[0].item() == pytest.approx(0.0015, rel=1e-6)
    assert schedule.betas[-1].item() == pytest.approx(0.0195, rel=1e-6)
    for t, value in SPEC_ALPHAS_CUMPROD.items():
        assert schedule.alphas_cumprod[t].item() == pytest.approx(value, rel=2e-5), t


def row(table, t):
    """(a, a') of the table's row at timestep t."""
    i = table.timesteps.index(t)
    return float(table.alpha_bar[i]), float(table.alpha_bar_to[i])


def test_reference_sigmas_match_spec(schedule):
    table = schedule.ddim_table(3, "reference")
    for s, value in SPEC_SIGMA.items():
        assert ddim_sigma(*row(table, s), eta=1.0) == pytest.approx(value, abs=1e-5), s
    assert ddim_sigma(*row(table, 3), eta=0.0) == 0.0


def test_reference_tables_are_shifted_by_one(schedule):
    ab = schedule.alphas_cumprod.double()
    reference, consistent = schedule.ddim_table(3, "reference"), schedule.ddim_table(3, "consistent")
    assert reference.timesteps == (1, 2, 3) and consistent.timesteps == (0, 1, 2, 3)
    assert row(reference, 3) == pytest.approx((ab[2].item(), ab[1].item()), rel=1e-6)
    assert row(reference, 1) == pytest.approx((ab[0].item(), ab[0].item()), rel=1e-6)
    assert row(consistent, 3) == pytest.approx((ab[3].item(), ab[2].item()), rel=1e-6)
    assert row(consistent, 0) == pytest.approx((ab[0].item(), 1.0), rel=1e-6)
    with pytest.raises(ValueError, match="variant"):
        schedule.ddim_table(3, "ddpm")


def test_add_noise_and_training_loss(schedule):
    torch.manual_seed(0)
    x0, noise, t = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, 3, 49, 99])
    ab = torch.tensor([SPEC_ALPHAS_CUMPROD[i] for i in (0, 3, 49, 99)])[:, None]
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), ab.sqrt() * x0 + (1 - ab).sqrt() * noise,
                               atol=1e-4, rtol=0)
    model = small_model(dim=6)
    expected = F.mse_loss(model(schedule.add_noise(x0, noise, t), t), x0)
    torch.testing.assert_close(schedule.training_loss(model, x0, t, noise), expected)
    zero = LFDN(in_dim=6, hidden_dim=8, num_blocks=1)  # outputs 0 at init -> loss = mean(x0^2)
    torch.testing.assert_close(schedule.training_loss(zero, x0, t, noise), x0.pow(2).mean())


def test_reference_last_step_returns_x_unchanged(schedule):
    torch.manual_seed(0)
    x, x0_hat, xi = torch.randn(3, 10), torch.randn(3, 10), torch.randn(3, 10)
    torch.testing.assert_close(schedule.step(x0_hat, x, schedule.ddim_table(3, "reference"), 0, eta=1.0, noise=xi),
                               x, atol=1e-6, rtol=0)


def test_noise_count_and_shape_check(schedule):
    assert reconstruct_noise_count(3) == 4
    with pytest.raises(ValueError, match="noise must have shape"):
        reconstruct(small_model(), torch.randn(2, 12), schedule, torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="variant"):
        reconstruct(small_model(), torch.randn(2, 12), schedule, torch.randn(2, 4, 12), variant="ddpm")


def hand_reference(model, z, noise, start=3, eta=1.0):
    """docs/lfdn.md (Schedule and reconstruction), written out from the text with an independently computed float64
    schedule."""
    betas = torch.linspace(math.sqrt(0.0015), math.sqrt(0.0195), 100, dtype=torch.float64) ** 2
    ab = torch.cumprod(1 - betas, 0).tolist()
    x = math.sqrt(ab[start]) * z + math.sqrt(1 - ab[start]) * noise[:, 0]
    for i, s in enumerate(range(start, 0, -1)):
        x0_hat = model(x, torch.full((z.shape[0],), s))
        eps = (x - math.sqrt(ab[s]) * x0_hat) / math.sqrt(1 - ab[s])
        a = ab[s - 1]
        a_prev = ab[s - 2] if s >= 2 else ab[0]
        x0p = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        x = math.sqrt(a_prev) * x0p + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise[:, 1 + i]
    return x


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_reference_matches_hand_unrolled_spec(schedule, eta):
    model = small_model()
    torch.manual_seed(1)
    z, noise = torch.randn(5, 12), torch.randn(5, 4, 12)
    with torch.no_grad():
        got = reconstruct(model, z, schedule, noise, eta=eta)
        expected = hand_reference(model, z, noise, eta=eta)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reference_output_ignores_the_last_xi(schedule):
    model = small_model()
    torch.manual_seed(2)
    z, noise = torch.randn(3, 12), torch.randn(3, 4, 12)
    other = noise.clone()
    other[:, 3] = torch.randn(3, 12)  # xi of the s=1 step, where sigma = 0
    with torch.no_grad():
        torch.testing.assert_close(reconstruct(model, z, schedule, noise), reconstruct(model, z, schedule, other))


def test_oracle_model_reconstruction(schedule):
    torch.manual_seed(3)
    z, noise = torch.randn(4, 720), torch.randn(4, 4, 720)
    oracle = lambda x, t: z  # noqa: E731  returns the true x0 exactly
    consistent = reconstruct(oracle, z, schedule, noise, eta=0.0, variant="consistent")
    assert (consistent - z).abs().max() < 1e-5  # clean DDIM with the true x0: exact
    # The reference's shifted tables and its return of x (not x0') leave a little noise, about the level of
    # index 0 (1 - ab_0 = 0.0015 per feature); still far below the unit feature scale.
    reference = reconstruct(oracle, z, schedule, noise, eta=0.0)
    assert (reference - z).pow(2).mean() < 0.005


def test_consistent_matches_diffusers_ddim(schedule):
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=100, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                         prediction_type="sample", clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(100)  # step ratio 1: t -> t-1, and t=0 -> alpha 1
    model = small_model()
    torch.manual_seed(4)
    z, noise = torch.randn(3, 12), torch.randn(3, 4, 12)
    with torch.no_grad():
        got = reconstruct(model, z, schedule, noise, variant="consistent")
        x = ddim.add_noise(z, noise[:, 0], torch.tensor([3]))
        for i, s in enumerate([3, 2, 1, 0]):
            xi = noise[:, 1 + i] if s > 0 else torch.zeros_like(z)
            x = ddim.step(model(x, torch.full((3,), s)), s, x, eta=1.0, variance_noise=xi).prev_sample
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)


def test_reconstruction_is_per_sample(schedule):
    """A sample's result depends on its own z and noise only (batch composition does not matter)."""
    model = small_model()
    torch.manual_seed(5)
    z, noise = torch.randn(6, 12), torch.randn(6, 4, 12)
    with torch.no_grad():
        full = reconstruct(model, z, schedule, noise)
        single = reconstruct(model, z[4:5], schedule, noise[4:5])
    torch.testing.assert_close(full[4:5], single, atol=1e-6, rtol=1e-6)


# ---- per-sample noise (ood_lightning/noise.py), which feeds reconstruct() ---------------------------------
from ood_lightning.noise import sample_integers, sample_noise  # noqa: E402


def test_sample_noise_does_not_depend_on_batch():
    shape = (reconstruct_noise_count(3), 16)
    alone = sample_noise(shape, torch.tensor([42]), seed=0, stream="cifar10/test/lfdn-last")
    batch = sample_noise(shape, torch.tensor([3, 9, 0, 42, 7, 1, 5]), seed=0, stream="cifar10/test/lfdn-last")
    assert alone.shape == (1, 4, 16) and batch.shape == (7, 4, 16)
    assert torch.equal(alone[0], batch[3])
    assert torch.equal(sample_noise(shape, [42], seed=0, stream="cifar10/test/lfdn-last"), alone)


def test_sample_noise_differs_across_stream_seed_and_index():
    def draw(index=5, seed=0, stream="svhn/test/lfdn-last"):
        return sample_noise((8,), torch.tensor([index]), seed=seed, stream=stream)[0]

    base = draw()
    for other in (draw(index=6), draw(seed=1), draw(stream="svhn/test/lfdn-first"), draw(stream="cifar10/test/lfdn-last")):
        assert not torch.allclose(base, other)
    rows = sample_noise((8,), torch.arange(4), seed=0, stream="s")
    assert len({tuple(r.tolist()) for r in rows}) == 4


def test_sample_noise_dtype_device_and_empty():
    x = sample_noise((3,), torch.tensor([1, 2]), seed=0, stream="s", dtype=torch.float16, device="cpu")
    assert x.dtype == torch.float16 and x.device.type == "cpu"
    torch.testing.assert_close(x.float(), sample_noise((3,), [1, 2], seed=0, stream="s"), atol=1e-3, rtol=1e-3)
    assert sample_noise((3,), torch.tensor([], dtype=torch.long), seed=0, stream="s").shape == (0, 3)
    with pytest.raises(TypeError):
        sample_noise((3,), torch.tensor([1.0]), seed=0, stream="s")


def test_sample_integers_are_per_sample_in_range_and_spread():
    values = sample_integers(100, torch.arange(2000), seed=0, stream="train/lfdn/epoch0/t")
    assert values.dtype == torch.int64 and values.shape == (2000,)
    assert 0 <= values.min() and values.max() < 100 and len(values.unique()) == 100  # every timestep is drawn
    again = sample_integers(100, [1999, 7], seed=0, stream="train/lfdn/epoch0/t")
    assert again.tolist() == [values[1999].item(), values[7].item()]  # a sample's value ignores its batch
    assert not torch.equal(sample_integers(100, torch.arange(2000), seed=0, stream="train/lfdn/epoch1/t"), values)
