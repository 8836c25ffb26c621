"""Tests of the OFD companions (margin, connector, partial L2) and KDLoss."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlckd.models.connectors import OFDConnector
from mmlckd.models.losses import KDLoss, OFDLoss, ofd_margin
from mmlckd.registry import MODELS


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """The tensors here are tiny: extra threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------
# ofd_margin
# --------------------------------------------------------------------------
def negative_mean_by_quadrature(m: float, s: float) -> float:
    """E[x | x < 0] for N(m, s^2) by numerical integration (float64)."""
    x = torch.linspace(m - 12 * s, 0.0, 200001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((x - m) / s)**2)
    return (torch.trapezoid(x * pdf, x) / torch.trapezoid(pdf, x)).item()


@pytest.mark.parametrize('m,s', [(0.0, 1.0), (0.5, 2.0), (-1.0, 0.5),
                                 (1.0, 0.7), (2.5, 1.0)])
def test_margin_is_mean_of_negative_part(m, s):
    margin = ofd_margin((torch.tensor([s]), torch.tensor([m])))
    assert margin.dtype == torch.float32
    assert margin.item() == pytest.approx(
        negative_mean_by_quadrature(m, s), rel=1e-4, abs=1e-5)
    # Monte-Carlo: mean of the negative samples of N(m, s^2)
    x = m + s * torch.randn(400000, generator=gen(1), dtype=torch.float64)
    neg = x[x < 0]
    stderr = neg.std().item() / math.sqrt(neg.numel())
    assert abs(margin.item() - neg.mean().item()) < 5 * stderr


def test_margin_branches_and_bn_input():
    # Phi(-3) = 0.00135 > 0.001: formula; Phi(-4) = 3e-5: -3 s.
    s = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0, 0.0])
    m = torch.tensor([3.0, 4.0, -8.0, -1.5, 2.0, 0.0])
    margin = ofd_margin((-s, m))  # the sign of gamma does not matter
    assert margin[0].item() == pytest.approx(
        negative_mean_by_quadrature(3.0, 1.0), rel=1e-3)
    assert margin[1].item() == -3.0
    assert margin[2].item() == pytest.approx(
        negative_mean_by_quadrature(-8.0, 2.0), rel=1e-4)
    # s == 0: the constant m, whose limit is min(m, 0)
    assert margin[3:].tolist() == [-1.5, 0.0, 0.0]
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.copy_(s)
        bn.bias.copy_(m)
    torch.testing.assert_close(ofd_margin(bn), margin)
    assert not ofd_margin(bn).requires_grad
    # BN without affine parameters: N(0, 1)
    plain = ofd_margin(nn.BatchNorm2d(3, affine=False))
    expected = -math.sqrt(2 / math.pi)  # E[x | x < 0] of N(0, 1)
    torch.testing.assert_close(plain, torch.full((3, ), expected))


# --------------------------------------------------------------------------
# OFDConnector
# --------------------------------------------------------------------------
def test_connector():
    torch.manual_seed(0)
    conn = OFDConnector(64, 512)
    assert conn.conv.bias is None
    assert conn.conv.weight.shape == (512, 64, 1, 1)
    w = conn.conv.weight.detach()
    std = math.sqrt(2 / 512)  # N(0, 2 / (k * k * C_out)), k = 1
    # 5 standard errors of the sample mean / std of 32768 draws
    assert abs(w.mean().item()) < 5 * std / math.sqrt(w.numel())
    assert w.std().item() == pytest.approx(
        std, rel=5 / math.sqrt(2 * w.numel()))
    assert torch.equal(conn.bn.weight, torch.ones(512))
    assert torch.equal(conn.bn.bias, torch.zeros(512))
    out = conn(torch.randn(2, 64, 5, 7))
    assert out.shape == (2, 512, 5, 7)
    built = MODELS.build(
        dict(type='mmlckd.OFDConnector', in_channels=8, out_channels=16))
    assert isinstance(built, OFDConnector)


# --------------------------------------------------------------------------
# OFDLoss
# --------------------------------------------------------------------------
def partial_l2_by_loops(s, t, margin):
    """sum over elements of (s - target)^2 where s > target or target > 0,
    target = max(t, margin[c]), divided by the batch size (python floats);
    without a margin every element counts (plain L2)."""
    total = 0.0
    for b in range(s.size(0)):
        for c in range(s.size(1)):
            for sv, tv in zip(s[b, c].flatten().tolist(),
                              t[b, c].flatten().tolist()):
                target = max(tv, margin[c]) if margin is not None else tv
                if margin is None or sv > target or target > 0:
                    total += (sv - target)**2
    return total / s.size(0)


def test_partial_l2_hand_made():
    # one channel, margin -1: every case of the mask
    t = torch.tensor([[[[-2.0, -2.0, -0.5, 0.5, 0.5, -0.5]]]])
    s = torch.tensor([[[[-3.0, 0.0, -1.0, 0.0, 1.0, 0.5]]]])
    # targets: -1, -1, -0.5, 0.5, 0.5, -0.5
    # counted: no (s<=t<=0), yes (s>t), no, yes (t>0), yes (t>0), yes (s>t)
    expected = 1.0 + 0.25 + 0.25 + 1.0
    loss = OFDLoss()([s], [t], [torch.tensor([-1.0])])
    assert loss.item() == pytest.approx(expected)
    # without a margin (no ReLU follows): plain L2 over every element
    expected = 1.0 + 4.0 + 0.25 + 0.25 + 0.25 + 1.0
    assert OFDLoss()([s], [t]).item() == pytest.approx(expected)


def test_partial_l2_random_against_loops():
    g = gen(2)
    shapes = [(2, 3, 4, 4), (2, 4, 2, 2)]
    s = [torch.randn(*sh, generator=g) for sh in shapes]
    t = [torch.randn(*sh, generator=g) for sh in shapes]
    margins = [torch.tensor([-0.5, -1.0, 0.2]), None]
    loss = OFDLoss(loss_weight=0.3)(s, t, margins)
    expected = 0.3 * (0.5 * partial_l2_by_loops(s[0], t[0], [-0.5, -1.0, 0.2])
                      + 1.0 * partial_l2_by_loops(s[1], t[1], None))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss = OFDLoss(feat_weights=[2.0, 0.1])(s, t, margins)
    expected = (2.0 * partial_l2_by_loops(s[0], t[0], [-0.5, -1.0, 0.2]) +
                0.1 * partial_l2_by_loops(s[1], t[1], None))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ofd_loss_gradients_resize_and_errors():
    g = gen(3)
    s = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    loss = OFDLoss()([s], [t])
    up = F.interpolate(s, size=(8, 8), mode='bilinear', align_corners=False)
    torch.testing.assert_close(loss, OFDLoss()([up], [t]))
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='connector'):
        OFDLoss()([torch.randn(2, 4, 4, 4)], [t.detach()])
    with pytest.raises(ValueError, match='margin 0 has 2 entries'):
        OFDLoss()([s], [t], [torch.zeros(2)])
    with pytest.raises(ValueError, match='2 levels'):
        OFDLoss(feat_weights=[1.0])([s, s], [t, t])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert OFDLoss()([s.bfloat16()], [t.bfloat16()]).dtype == \
            torch.float32


# --------------------------------------------------------------------------
# KDLoss
# --------------------------------------------------------------------------
def kl_softmax(s, t, dim):
    """KL(softmax(t) || softmax(s)) along dim, by the textbook formula."""
    p, q = torch.softmax(t, dim), torch.softmax(s, dim)
    return (p * (p.log() - q.log())).sum(dim)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_kd_classification_temperature(temperature):
    g = gen(4)
    s, t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    loss = KDLoss(temperature=temperature, loss_weight=0.5)(s, t)
    expected = 0.5 * temperature**2 * kl_softmax(s / temperature,
                                                 t / temperature, 1).mean()
    torch.testing.assert_close(loss, expected)
    assert KDLoss(temperature=temperature)(t, t).abs().item() < 1e-6


def test_kd_pixel_ignore_index():
    g = gen(5)
    s = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, generator=g)
    labels = torch.randint(0, 4, (2, 3, 3), generator=g)
    labels[0, 0, :] = 255
    labels[1, 2, 1] = 255
    valid = labels != 255
    loss_fn = KDLoss()
    loss = loss_fn(s, t, labels)
    expected = kl_softmax(s, t, 1)[valid].mean()
    torch.testing.assert_close(loss, expected)
    # changing the logits at ignored positions changes nothing
    s2, t2 = s.detach().clone(), t.clone()
    s2[~valid.unsqueeze(1).expand_as(s2)] = 100.0
    t2[~valid.unsqueeze(1).expand_as(t2)] = -100.0
    torch.testing.assert_close(loss_fn(s2, t2, labels), loss)
    # labels at a higher resolution are resized with nearest
    big = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(loss_fn(s, t, big), loss)
    assert loss_fn(s, t, torch.full_like(labels, 255)).item() == 0.0
    loss.backward()
    assert s.grad[~valid.unsqueeze(1).expand_as(s)].abs().max() == 0


def test_kd_sigmoid():
    g = gen(6)
    s, t = torch.randn(
        2, 3, 4, 4, generator=g), torch.randn(
            2, 3, 4, 4, generator=g)
    T = 2.0
    loss = KDLoss(activation='sigmoid', temperature=T)(s, t)
    p, q = torch.sigmoid(t / T), torch.sigmoid(s / T)
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    torch.testing.assert_close(loss, T * T * kl.sum(1).mean())
    assert KDLoss(activation='sigmoid')(t, t).abs().item() < 1e-6


def test_kd_channel_mode():
    g = gen(7)
    s, t = torch.randn(
        2, 3, 4, 5, generator=g), torch.randn(
            2, 3, 4, 5, generator=g)
    loss = KDLoss(mode='channel', temperature=3.0)(s, t)
    expected = 9.0 * kl_softmax(s.flatten(2) / 3, t.flatten(2) / 3, 2).mean()
    torch.testing.assert_close(loss, expected)
    assert KDLoss(mode='channel')(t, t).abs().item() < 1e-6
    with pytest.raises(ValueError, match='softmax'):
        KDLoss(mode='channel', activation='sigmoid')


def test_kd_errors_resize_and_dtype():
    with pytest.raises(ValueError, match='21 classes') as err:
        KDLoss()(torch.randn(2, 21, 4, 4), torch.randn(2, 19, 4, 4))
    assert '19' in str(err.value) and 'same classes' in str(err.value)
    g = gen(8)
    s = torch.randn(2, 5, 4, 4, generator=g)
    t = torch.randn(2, 5, 8, 8, generator=g)
    up = F.interpolate(s, size=(8, 8), mode='bilinear', align_corners=False)
    torch.testing.assert_close(KDLoss()(s, t), KDLoss()(up, t))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = KDLoss()(s.half(), t.bfloat16())
    assert loss.dtype == torch.float32
    assert isinstance(
        MODELS.build(dict(type='mmlckd.KDLoss', temperature=2.0)), KDLoss)
