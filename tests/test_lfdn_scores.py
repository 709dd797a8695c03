"""MSE and MFsim scores on hand-made cases."""
import pytest
import torch
from torch.nn import functional as F

from ood_lightning.detectors.lfdn.scores import mfsim_score, mse_score

B4_GROUPS = [24, 32, 56, 160, 448]


def test_mse_is_a_sum_of_squared_errors():
    z = torch.zeros(2, 720)
    z_hat = torch.zeros(2, 720)
    z_hat[0] = 0.5
    z_hat[1, :10] = 2.0
    torch.testing.assert_close(mse_score(z, z_hat), torch.tensor([720 * 0.25, 10 * 4.0]))
    assert torch.equal(mse_score(z_hat, z_hat), torch.zeros(2))


def test_mfsim_identical_vectors_is_minus_one():
    torch.manual_seed(0)
    z = torch.randn(3, 720)
    for skip in (True, False):
        torch.testing.assert_close(mfsim_score(z, z.clone(), B4_GROUPS, skip), torch.full((3,), -1.0))


def test_mfsim_orthogonal_group_contributes_zero():
    z = torch.zeros(1, 4)
    z[0, :2] = torch.tensor([1.0, 0.0])
    z[0, 2:] = torch.tensor([1.0, 0.0])
    z_hat = z.clone()
    z_hat[0, 2:] = torch.tensor([0.0, 3.0])  # group 1 orthogonal, group 0 identical
    assert mfsim_score(z, z_hat, [2, 2], skip_first_group=False).item() == pytest.approx(-0.5)
    assert mfsim_score(z, z_hat, [2, 2], skip_first_group=True).item() == pytest.approx(0.0)


def test_mfsim_reference_skips_first_group_and_divides_by_l_minus_1():
    torch.manual_seed(1)
    z, z_hat = torch.randn(4, 720), torch.randn(4, 720)
    ends = [24, 56, 112, 272, 720]
    cos = [F.cosine_similarity(z_hat[:, a:b], z[:, a:b], dim=1) for a, b in zip(ends[:-1], ends[1:])]
    torch.testing.assert_close(mfsim_score(z, z_hat, B4_GROUPS), -sum(cos) / 4)


def test_skip_first_group_changes_only_through_group_0():
    torch.manual_seed(2)
    z, z_hat = torch.randn(5, 720), torch.randn(5, 720)
    changed = z_hat.clone()
    changed[:, :24] = torch.randn(5, 24)  # only group 0 differs
    torch.testing.assert_close(mfsim_score(z, z_hat, B4_GROUPS), mfsim_score(z, changed, B4_GROUPS))
    assert not torch.allclose(mfsim_score(z, z_hat, B4_GROUPS, False), mfsim_score(z, changed, B4_GROUPS, False))
    # with group 0 identical to the input, the all-group mean is (reference * 4 - 1) / 5
    same0 = z_hat.clone()
    same0[:, :24] = z[:, :24]
    torch.testing.assert_close(mfsim_score(z, same0, B4_GROUPS, False),
                               (4 * mfsim_score(z, same0, B4_GROUPS) - 1) / 5)


def test_zero_group_gives_zero_similarity_not_nan():
    z, z_hat = torch.ones(1, 4), torch.ones(1, 4)
    z_hat[0, 2:] = 0
    assert mfsim_score(z, z_hat, [2, 2], False).item() == pytest.approx(-0.5)


def test_bad_group_sizes_and_shapes():
    with pytest.raises(ValueError, match="sum to"):
        mfsim_score(torch.zeros(1, 10), torch.zeros(1, 10), [4, 4])
    with pytest.raises(ValueError, match="at least two groups"):
        mfsim_score(torch.zeros(1, 10), torch.zeros(1, 10), [10])
    with pytest.raises(ValueError, match="same shape"):
        mse_score(torch.zeros(1, 10), torch.zeros(1, 9))


def test_half_precision_inputs_are_scored_in_float32():
    z = torch.randn(2, 720)
    assert mse_score(z.half(), z.half() + 1).dtype == torch.float32
