"""PKDLoss and PredictionKDLoss against closed forms and independent
transcriptions (numpy's Pearson correlation, the infinite-temperature limit
of KD)."""
import numpy as np
import pytest
import torch

from mmlckd.models.losses import (KDLoss, PKDLoss, PredictionKDLoss,
                                  channel_standardise, split_classes)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64) * \
        scale


# ------------------------------------------------------------------ PKD
def test_channel_standardise_rows():
    x = rand(3, 5, 4, 4) * 7 + 2
    rows = channel_standardise(x, eps=0.0)
    assert rows.shape == (5, 3 * 16)
    assert torch.allclose(rows.mean(1), torch.zeros(5, dtype=x.dtype),
                          atol=1e-12)
    assert torch.allclose(rows.std(1), torch.ones(5, dtype=x.dtype))


def test_pkd_is_one_minus_pearson_per_channel():
    """MSE/2 of standardised maps = (M-1)/M * mean_c (1 - r_c), r from
    numpy.corrcoef over the N*H*W values of channel c."""
    s, t = rand(2, 6, 5, 5, seed=1), rand(2, 6, 5, 5, seed=2)
    t = t + 0.8 * s  # correlated
    loss = PKDLoss(eps=0.0)(s, t).item()
    m = 2 * 25
    r = [np.corrcoef(s[:, c].flatten().numpy(),
                     t[:, c].flatten().numpy())[0, 1] for c in range(6)]
    assert loss == pytest.approx((m - 1) / m * np.mean(1 - np.array(r)),
                                 rel=1e-9)


def test_pkd_invariant_to_per_channel_affine_scale():
    """What PKD is for: a channel's magnitude and offset do not matter."""
    s, t = rand(2, 4, 6, 6, seed=3), rand(2, 4, 6, 6, seed=4)
    scale = torch.tensor([1e-3, 1.0, 50.0, 3e3], dtype=s.dtype)
    shifted = s * scale[None, :, None, None] + 7.0
    loss = PKDLoss(eps=0.0)
    assert loss(shifted, t).item() == pytest.approx(loss(s, t).item(),
                                                    rel=1e-9)
    assert loss(t, t).item() == pytest.approx(0.0, abs=1e-12)


def test_pkd_sums_levels_resizes_student_and_only_student_gets_grad():
    s = [rand(2, 3, 8, 8, seed=5).requires_grad_(),
         rand(2, 3, 4, 4, seed=6).requires_grad_()]
    t = [rand(2, 3, 16, 16, seed=7).requires_grad_(),
         rand(2, 3, 4, 4, seed=8).requires_grad_()]
    loss = PKDLoss()
    total = loss(s, t)
    up = torch.nn.functional.interpolate(s[0], size=(16, 16),
                                         mode='bilinear', align_corners=False)
    assert total.item() == pytest.approx(
        (loss.level(up, t[0]) + loss.level(s[1], t[1])).item(), rel=1e-12)
    total.backward()
    assert s[0].grad is not None and s[0].grad.abs().sum() > 0
    assert t[0].grad is None and t[1].grad is None


def test_pkd_channel_mismatch_names_the_fix():
    with pytest.raises(ValueError, match='connector'):
        PKDLoss()(rand(1, 3, 4, 4), rand(1, 5, 4, 4))


# ------------------------------------------------------------ prediction KD
def test_kl_distance_equals_kdloss():
    s, t = rand(2, 7, 3, 3, seed=1), rand(2, 7, 3, 3, seed=2)
    for act in ('softmax', 'sigmoid'):
        ours = PredictionKDLoss('kl', act, temperature=2.0)(s, t)
        ref = KDLoss(temperature=2.0, activation=act)(s, t)
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12)


@pytest.mark.parametrize('activation', ['softmax', 'sigmoid'])
def test_logit_distance_is_the_infinite_temperature_limit_of_kd(activation):
    """T^2 KL(softmax(t/T) || softmax(s/T)) -> 1/(2C) sum (s^ - t^)^2 for
    centred logits; the Bernoulli KL -> (s - t)^2 / 8 per class."""
    s, t = rand(3, 5, seed=3), rand(3, 5, seed=4)
    logit = PredictionKDLoss('logit', activation)(s, t).item()
    kd = PredictionKDLoss('kl', activation, temperature=1e4)(s, t).item()
    assert logit == pytest.approx(kd, rel=1e-4)
    if activation == 'softmax':  # and it ignores a per-row offset
        shifted = PredictionKDLoss('logit', activation)(s + 3.0, t).item()
        assert shifted == pytest.approx(logit, rel=1e-12)


def test_correlation_distance_against_numpy():
    s, t = rand(4, 6, seed=5), rand(4, 6, seed=6)
    ours = PredictionKDLoss('correlation', 'softmax')(s, t).item()
    p_s = torch.softmax(s, 1).numpy()
    p_t = torch.softmax(t, 1).numpy()
    r = [np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(4)]
    assert ours == pytest.approx(np.mean(1 - np.array(r)), rel=1e-9)
    same = PredictionKDLoss('correlation', 'sigmoid')(t, t).item()
    assert same == pytest.approx(0.0, abs=1e-12)


def test_split_classes_groups_anchor_major_channels():
    """mmdet's dense heads lay out (B, A*C, H, W) anchor-major."""
    x = torch.arange(2 * 6 * 1 * 1, dtype=torch.float64).reshape(2, 6, 1, 1)
    y = split_classes(x, 3)
    assert y.shape == (4, 3, 1, 1)
    assert y[1, :, 0, 0].tolist() == [3.0, 4.0, 5.0]  # sample 0, anchor 1
    with pytest.raises(ValueError, match='multiple'):
        split_classes(x, 4)


def test_correlation_over_classes_of_each_anchor():
    """With num_classes the correlation is taken over each anchor's
    classes, not over all channels."""
    s, t = rand(1, 6, 2, 2, seed=7), rand(1, 6, 2, 2, seed=8)
    loss = PredictionKDLoss('correlation', 'sigmoid', num_classes=3)
    ref = PredictionKDLoss('correlation', 'sigmoid')(
        split_classes(s, 3), split_classes(t, 3))
    assert loss(s, t).item() == pytest.approx(ref.item(), rel=1e-12)


def test_labels_leave_out_ignored_pixels():
    s, t = rand(1, 4, 2, 2, seed=9), rand(1, 4, 2, 2, seed=10)
    labels = torch.tensor([[[0, 255], [255, 255]]])
    loss = PredictionKDLoss('logit', 'softmax')(s, t, labels).item()
    only = PredictionKDLoss('logit', 'softmax')(s[..., :1, :1],
                                                t[..., :1, :1]).item()
    assert loss == pytest.approx(only, rel=1e-12)


@pytest.mark.parametrize('distance', ['kl', 'logit', 'correlation'])
def test_gradient_reaches_the_student_only(distance):
    s = rand(2, 5, 3, 3, seed=11).requires_grad_()
    t = rand(2, 5, 3, 3, seed=12).requires_grad_()
    PredictionKDLoss(distance, 'sigmoid', num_classes=5)(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='distance'):
        PredictionKDLoss('js')
    with pytest.raises(ValueError, match='same classes'):
        PredictionKDLoss()(rand(1, 3), rand(1, 4))


def test_pkd_is_finite_on_a_single_value_per_channel():
    """Batch 1 on a 1x1 FPN level: one value per channel (the unbiased
    std of one value is NaN)."""
    s = rand(1, 4, 1, 1, seed=13).requires_grad_()
    loss = PKDLoss()(s, rand(1, 4, 1, 1, seed=14))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize('shape', [(2, 6, 5, 5), (3, 4, 2, 7), (1, 5, 1, 1)])
def test_pkd_closed_form_equals_the_standardised_maps(shape):
    """PKDLoss's per-channel sums (standardised_mse) against the definition
    written out: both maps standardised, then MSE/2; values and the
    student's gradient, float64."""
    import torch.nn.functional as F
    s = (rand(*shape, seed=11) * 3 + 1).requires_grad_()
    t = rand(*shape, seed=12) * 0.5 - 2
    ref = F.mse_loss(channel_standardise(s), channel_standardise(t)) / 2
    got = PKDLoss()(s, t)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-15)
    g_ref, = torch.autograd.grad(ref, s)
    g_got, = torch.autograd.grad(got, s)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-12)


def test_pkd_exactly_constant_channel_has_a_finite_gradient():
    s = rand(2, 3, 4, 4, seed=13)
    s[:, 1] = 0.0  # exactly constant: its centred values are exactly 0
    s.requires_grad_()
    t = rand(2, 3, 4, 4, seed=14)
    PKDLoss()(s, t).backward()
    assert torch.isfinite(s.grad).all()
    # the other channels' gradients are the definition's
    ref = s.detach().clone().requires_grad_()
    import torch.nn.functional as F
    cs, ct = channel_standardise(ref), channel_standardise(t)
    (F.mse_loss(cs, ct, reduction='sum') / 2 / cs.numel()).backward()
    keep = [0, 2]
    torch.testing.assert_close(s.grad[:, keep], ref.grad[:, keep])


@pytest.mark.parametrize('scale,shift', [(2.0, -4.0), (10.0, 0.0),
                                         (30.0, -20.0)])
@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_sigmoid_kl_against_the_bernoulli_formula(scale, shift, temperature):
    """The sigmoid KL (its own autograd function) against the per-class
    Bernoulli KL written with log-sigmoids, float64: values and gradients,
    background-like logits far below zero and saturated ones included."""
    import torch.nn.functional as F
    from mmlckd.models.losses.prediction_kd_loss import position_distance
    s = (rand(4, 20, 3, 3, seed=15) * scale + shift).requires_grad_()
    t = rand(4, 20, 3, 3, seed=16) * scale + shift
    st, tt = s / temperature, t / temperature
    p = torch.sigmoid(tt)
    ref = (p * (F.logsigmoid(tt) - F.logsigmoid(st)) + (1 - p) *
           (F.logsigmoid(-tt) - F.logsigmoid(-st))).sum(1) * temperature**2
    got = position_distance(s, t, 'kl', 'sigmoid', temperature)
    assert got.shape == (4, 3, 3)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    assert (got >= -1e-12).all()
    w = rand(4, 3, 3, seed=17)
    g_ref, = torch.autograd.grad((ref * w).sum(), s)
    g_got, = torch.autograd.grad((got * w).sum(), s)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-12)
    # the closed form of the gradient: T (sigmoid(s/T) - sigmoid(t/T))
    torch.testing.assert_close(
        g_got, temperature * (torch.sigmoid(st) - p) * w[:, None])
