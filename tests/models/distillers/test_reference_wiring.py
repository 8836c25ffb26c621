"""LONDON as the reference computes it, and the automatic loss balance.

``reference_london`` below is a transcription, written from the published
description of the reference loop (``distiller_london.py``), of how the
public LONDON code forms its Lipschitz loss: for pair ``i`` it first
replaces ``s_feats[i]`` by ``connector_i(s_feats[i])`` and then forms the
student TM from that and the still-raw ``s_feats[i + 1]``; sigma is
``sqrt(||K v|| / ||v||)`` after power iteration on ``K = TM TM^T`` from a
ones vector; the pair's MSE is divided by ``2 ** (N - i - 1)``. It is run
with many iterations in float64 so that it converges, which makes it the
ground truth that our factored, warm-started estimator must reproduce.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS, init_default_scope

import mmlckd  # noqa: F401
from mmlckd.models import LipschitzLoss, OFDConnector
from mmlckd.models.distillers import LossBalancer, lipschitz_maps
from mmlckd.testing import det_batch, det_model

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def _ref_tm(f0, f1):
    if f0.shape[-2:] != f1.shape[-2:]:
        f0 = F.adaptive_avg_pool2d(f0, f1.shape[-2:])
    a = f0.flatten(2)
    b = f1.flatten(2)
    return torch.bmm(a, b.transpose(1, 2)) / (f1.size(2) * f1.size(3))


def _ref_sigma(tm, iters):
    k = torch.bmm(tm, tm.transpose(1, 2))
    v = torch.ones(k.size(0), k.size(1), 1, dtype=k.dtype)
    for _ in range(iters):
        v = torch.bmm(k, v)
        v = v / v.norm(dim=1, keepdim=True)
    kv = torch.bmm(k, v)
    return (kv.norm(dim=1) / v.norm(dim=1)).sqrt().squeeze(1)


def reference_london(s_feats, t_feats, connectors, iters=500):
    """The reference loop (transcribed; see the module docstring)."""
    s_feats = list(s_feats)
    n = len(s_feats)
    loss = 0.0
    for i in range(n - 1):
        s_feats[i] = connectors[i](s_feats[i])
        sig_s = _ref_sigma(_ref_tm(s_feats[i], s_feats[i + 1]), iters)
        sig_t = _ref_sigma(_ref_tm(t_feats[i], t_feats[i + 1]), iters)
        loss = loss + F.mse_loss(sig_s, sig_t) / 2**(n - i - 1)
    return loss


def _features(seed, chans, sizes, batch=3):
    g = torch.Generator().manual_seed(seed)
    # post-ReLU-like maps plus a shared direction: a clear spectral gap, so
    # the reference's 500 iterations from ones converge to float64 accuracy
    out = []
    for c, s in zip(chans, sizes):
        base = torch.rand(batch, 1, s, s, generator=g, dtype=torch.float64)
        noise = torch.rand(batch, c, s, s, generator=g, dtype=torch.float64)
        out.append(base * torch.linspace(1, 2, c, dtype=torch.float64)
                   .view(1, c, 1, 1) + 0.3 * noise)
    return out


def _connectors(s_chans, t_chans):
    torch.manual_seed(0)
    conns = nn.ModuleList(OFDConnector(s, t) for s, t in zip(s_chans,
                                                             t_chans))
    conns.double().eval()  # eval: BN uses (identity) running statistics
    with torch.no_grad():  # make the BN affine part non-trivial
        for c in conns:
            c.bn.weight.uniform_(0.5, 1.5)
            c.bn.bias.uniform_(0.0, 0.2)
    return conns


@pytest.mark.parametrize('num', [3, 4])
def test_reference_wiring_matches_the_transcribed_reference_loop(num):
    s_chans, t_chans = [4, 8, 16, 32][:num], [8, 16, 32, 64][:num]
    sizes = [16, 8, 4, 2][:num]
    s_feats = _features(1, s_chans, sizes)
    t_feats = _features(2, t_chans, sizes)
    conns = _connectors(s_chans, t_chans)
    expected = reference_london(s_feats, t_feats, conns)

    loss = LipschitzLoss(loss_weight=1.0, cold_iters=200)
    s_conn = [c(f) for c, f in zip(conns, s_feats)]
    s_out, s_in = lipschitz_maps(s_feats, s_conn, 'reference')
    got, _ = loss(s_out, t_feats, student_inputs=s_in)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=0)
    # the other wirings are different losses on the same input
    for wiring in ('connector', 'raw'):
        out, inp = lipschitz_maps(s_feats, s_conn, wiring)
        other, _ = LipschitzLoss(cold_iters=200)(out, t_feats,
                                                 student_inputs=inp)
        assert not torch.allclose(other, expected, rtol=1e-3)


def test_reference_block_weights_give_the_deepest_pair_one_half():
    s_feats = _features(3, [4, 8, 16], [8, 4, 2])
    t_feats = _features(4, [4, 8, 16], [8, 4, 2])
    per_pair = []
    for w in ([1.0, 0.0], [0.0, 1.0]):
        per_pair.append(LipschitzLoss(block_weights=w, cold_iters=100)(
            s_feats, t_feats)[0])
    ref, _ = LipschitzLoss(cold_iters=100)(s_feats, t_feats)
    torch.testing.assert_close(ref, per_pair[0] / 4 + per_pair[1] / 2)


def test_reference_wiring_gradients_reach_connectors_and_both_raw_maps():
    s_feats = [f.clone().requires_grad_() for f in _features(
        5, [4, 8, 16], [8, 4, 2])]
    t_feats = _features(6, [8, 16, 32], [8, 4, 2])
    conns = _connectors([4, 8, 16], [8, 16, 32])
    s_conn = [c(f) for c, f in zip(conns, s_feats)]
    s_out, s_in = lipschitz_maps(s_feats, s_conn, 'reference')
    LipschitzLoss()(s_out, t_feats, student_inputs=s_in)[0].backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0
               for f in s_feats)
    # the deepest connector is not used by any pair of the reference loop
    assert conns[-1].conv.weight.grad is None
    assert all(c.conv.weight.grad.abs().sum() > 0 for c in conns[:-1])


# ------------------------------------------------------------ the balancer
def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g, requires_grad=True)
    x = torch.randn(4, 5, generator=g)
    task = (x @ w).square().mean()
    terms = {'loss_a': 1e4 * (x @ w).abs().mean(),
             'loss_b': 1e-3 * w.square().sum()}
    return w, task, terms


def _norm(out, w):
    return torch.autograd.grad(out, [w], retain_graph=True)[0].norm()


@pytest.mark.parametrize('by', ['grad', 'loss'])
def test_balancer_fixes_weights_at_the_stated_fraction(by):
    bal = LossBalancer(['loss_a', 'loss_b'], fraction=dict(a=0.5, b=0.1),
                       iters=3, by=by, log_interval=0)
    for _ in range(3):
        w, task, terms = _toy()
        assert float(bal.weights.abs().sum()) == 0  # 0 while calibrating
        logs = bal(task, terms, [w])
    assert bal.calibrated and set(logs) == {'weight_a', 'weight_b'}
    w, task, terms = _toy()
    for name, frac in (('loss_a', 0.5), ('loss_b', 0.1)):
        weighted = terms[name] * bal.weight_of()[name]
        if by == 'grad':
            ratio = _norm(weighted, w) / _norm(task, w)
        else:
            ratio = weighted / task
        torch.testing.assert_close(ratio.detach(), torch.tensor(frac),
                                   rtol=1e-5, atol=0)


def test_balancer_says_why_the_total_loss_jumps(monkeypatch):
    """The line at the end of the calibration says that the total loss
    rises from the next step, and why (issue 19, item 7)."""
    import mmlckd.models.distillers.balance as balance
    lines = []
    monkeypatch.setattr(balance, 'print_log',
                        lambda msg, **kw: lines.append(msg))
    bal = LossBalancer(['loss_a', 'loss_b'], iters=2, log_interval=0)
    for seed in range(2):
        assert lines == []  # nothing during the calibration
        w, task, terms = _toy(seed)
        bal(task, terms, [w])
    assert len(lines) == 1 and 'weights fixed after 2 steps' in lines[0]
    assert 'total `loss`' in lines[0] and 'jumps' in lines[0]
    assert 'weighed 0 while calibrating' in lines[0]


def test_balancer_state_resumes_mid_calibration_exactly():
    a = LossBalancer(['loss_a', 'loss_b'], iters=4, log_interval=0)
    for seed in range(2):
        w, task, terms = _toy(seed)
        a(task, terms, [w])
    b = LossBalancer(['loss_a', 'loss_b'], iters=4, log_interval=0)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for seed in range(2, 4):
        for bal in (a, b):
            w, task, terms = _toy(seed)
            bal(task, terms, [w])
    assert a.calibrated and b.calibrated
    assert torch.equal(a.weights, b.weights) and float(a.weights[0]) > 0


def test_balancer_measures_only_the_steps_it_counts(monkeypatch):
    """The first half of the calibration is not counted, so it runs no
    extra backward; the counted half runs one per output (issue 21)."""
    import mmlckd.models.distillers.balance as balance
    calls = []
    real = balance.grad_norms
    monkeypatch.setattr(balance, 'grad_norms',
                        lambda outs, params: calls.append(len(outs)) or
                        real(outs, params))
    bal = LossBalancer(['loss_a', 'loss_b'], iters=4, log_interval=0)
    per_step = []
    for seed in range(4):
        w, task, terms = _toy(seed)
        before = len(calls)
        bal(task, terms, [w])
        per_step.append(sum(calls[before:]))
    assert per_step == [0, 0, 3, 3] and bal.calibrated


def test_balancer_builds_task_total_and_parameters_only_when_it_measures():
    """The distiller hands the task total and the parameter list as
    functions: a step that measures nothing (the first half of the
    calibration, a steady step without shares) builds neither."""
    bal = LossBalancer(['loss_a', 'loss_b'], iters=4, log_interval=3)
    built = []
    for step in range(8):
        w, task, terms = _toy(step)
        bal(lambda: built.append(('task', step)) or task, terms,
            lambda: built.append(('params', step)) or [w])
    # measured: calibration steps 2, 3; shares at steps 5 (6th; 3 | 6)
    assert built == [('task', 2), ('params', 2), ('task', 3),
                     ('params', 3), ('task', 5), ('params', 5)]
    assert bal.calibrated and bool((bal.weights > 0).all())


def test_balancer_logs_gradient_shares_at_its_interval():
    """Shares only at the steps that are multiples of log_interval (counted
    from 1, as mmengine's LoggerHook prints), never in the calibration."""
    bal = LossBalancer(['loss_a'], iters=3, log_interval=2)
    shares, logs = [], None
    for _ in range(8):
        w, task, terms = _toy()
        out = bal(task, {'loss_a': terms['loss_a'],
                         'loss_b': terms['loss_b']}, [w])
        shares.append('gshare_a' in out)
        logs = out if 'gshare_a' in out else logs
    # iteration 2 falls in the calibration (weights 0): no shares
    assert shares == [False, False, False, True, False, True, False, True]
    # after calibration loss_a weighs 0.5 of the task's gradient norm
    torch.testing.assert_close(logs['gnorm_a'] / logs['gnorm_task'],
                               torch.tensor(0.5), rtol=1e-5, atol=0)
    total = logs['gshare_task'] + logs['gshare_a'] + logs['gshare_b']
    torch.testing.assert_close(total, torch.tensor(1.0))


def test_balancer_rejects_bad_settings_with_a_useful_message():
    with pytest.raises(ValueError, match="'grad' or 'loss'"):
        LossBalancer(['loss_a'], by='value')
    with pytest.raises(ValueError, match='unknown terms'):
        LossBalancer(['loss_a'], fraction=dict(kd=1.0))
    with pytest.raises(ValueError, match='must be > 0'):
        LossBalancer(['loss_a'], fraction=-1.0)
    bal = LossBalancer(['loss_a'], iters=1, log_interval=0)
    w, task, _ = _toy()
    with pytest.raises(ValueError, match='connector warm-up'):
        bal(task, {'loss_a': (w * 0).sum()}, [w])


def _distiller(**kw):
    init_default_scope('mmdet')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='mmlckd.LipschitzDistiller', student=det_model(),
        teacher=dict(config=dict(model=det_model(base=32),
                                 default_scope='mmdet'), checkpoint=None),
        **kw))


def test_distiller_defaults_balance_every_term_by_gradient():
    model = _distiller(balance=dict(iters=2, log_interval=1))
    assert model.lipschitz_on == 'reference'
    # the backbone terms and the task-aware terms of a RetinaNet
    terms = ['loss_lipschitz', 'loss_feat', 'loss_neck', 'loss_preds']
    assert model.balancer.terms == terms
    model.train()
    inputs, samples = det_batch(model)
    for _ in range(2):  # calibration: the terms weigh 0 but keep a graph
        losses = model(inputs, samples, mode='loss')
        assert float(losses['loss_lipschitz']) == 0
        loss, _ = model.parse_losses(losses)
        model.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.connectors.parameters())
    losses = model(inputs, samples, mode='loss')
    params = model._student_params()
    task = model.parse_losses({k: v for k, v in losses.items()
                               if k not in terms})[0]
    g_task = torch.sqrt(sum(g.square().sum() for g in torch.autograd.grad(
        task, params, retain_graph=True, allow_unused=True)
        if g is not None))
    for term in terms:
        g = torch.sqrt(sum(x.square().sum() for x in torch.autograd.grad(
            losses[term], params, retain_graph=True, allow_unused=True)
            if x is not None))
        # same batch, train-mode BN: the start ratio is the fraction
        torch.testing.assert_close(g / g_task, torch.tensor(0.5),
                                   rtol=2e-3, atol=0)
        assert f'weight_{term[5:]}' in losses
        assert f'gshare_{term[5:]}' in losses
    state = model.state_dict()
    assert 'balancer.weights' in state and 'balancer.count' in state
    fresh = _distiller(balance=dict(iters=2, log_interval=1))
    fresh.load_state_dict(state)
    assert fresh.balancer.calibrated
    assert torch.equal(fresh.balancer.weights, model.balancer.weights)


def test_explicit_weights_bypass_the_balancer():
    model = _distiller(
        lipschitz_loss=dict(type='mmlckd.LipschitzLoss', loss_weight=1e-3),
        feature_loss=dict(type='mmlckd.OFDLoss', loss_weight=5e-5),
        terms=dict(preds=dict(type='mmlckd.PredictionKDTerm',
                              loss_weight=0.5)))
    assert model.balancer.terms == []
    assert model.term_weights == {'loss_preds': 0.5}
    assert model.lipschitz_loss.loss_weight == 1e-3
    with pytest.raises(ValueError, match='balance=None'):
        _distiller(balance=None)


def test_balanced_weights_apply_outside_training_too():
    """A loss computed in eval mode or under no_grad (e.g. a validation
    loss) uses the balancer's current weights, not the raw terms."""
    model = _distiller(balance=dict(iters=1, log_interval=0))
    inputs, samples = det_batch(model)
    model.eval()
    with torch.no_grad():
        losses = model(inputs, samples, mode='loss')
    assert float(losses['loss_lipschitz']) == 0  # not calibrated yet
    assert not model.balancer.calibrated  # no_grad/eval does not calibrate
    model.train()
    model(inputs, samples, mode='loss')  # the one calibration step
    weight = float(model.balancer.weights[0])
    assert weight > 0
    model.eval()
    with torch.no_grad():
        weighted = float(model(inputs, samples,
                               mode='loss')['loss_lipschitz'])
        model.balancer.weights.fill_(1.0)  # the unweighted term, for scale
        raw = float(model(inputs, samples, mode='loss')['loss_lipschitz'])
    assert weighted == pytest.approx(weight * raw, rel=1e-3)
    assert abs(weight - 1.0) > 0.1  # so the two differ


def test_cfg_options_change_one_field_of_a_default_loss(tmp_path,
                                                        monkeypatch):
    """``--cfg-options model.lipschitz_loss.distance=l1
    model.feature_loss.loss_weight=1e-5`` on a config that leaves both
    losses to their defaults: each merges onto the default loss type."""
    import argparse

    from mmengine.config import Config

    from mmlckd.cli.args import load_tool_cfg, parse_with_launcher_args
    monkeypatch.setenv('LOCAL_RANK', '0')
    Config(dict(model=dict(
        type='mmlckd.LipschitzDistiller', student=det_model(),
        teacher=dict(config=dict(model=det_model(base=32),
                                 default_scope='mmdet'), checkpoint=None)),
        default_scope='mmdet')).dump(str(tmp_path / 'cfg.py'))
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    args = parse_with_launcher_args(parser, [
        str(tmp_path / 'cfg.py'), '--cfg-options',
        'model.lipschitz_loss.distance=l1',
        'model.feature_loss.loss_weight=1e-5'])
    cfg = load_tool_cfg(args)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert type(model.lipschitz_loss).__name__ == 'LipschitzLoss'
    assert model.lipschitz_loss.distance == 'l1'
    assert type(model.feature_loss).__name__ == 'OFDLoss'
    assert model.feature_loss.loss_weight == 1e-5
    # the explicit weight bypasses the balancer, the others stay auto
    assert model.balancer.terms == ['loss_lipschitz', 'loss_neck',
                                    'loss_preds']
