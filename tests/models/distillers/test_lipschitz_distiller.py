"""LipschitzDistiller at model level: tiny random-init detectors and
segmentors, fake batches (fast). Runner-level training lives in
test_engine.py / test_configs.py."""
import copy

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

import mmlckd  # noqa: F401
from mmlckd.apis import save_student
from mmlckd.engine.hooks import ConnectorWarmupHook, DistillWeightHook
from mmlckd.testing import det_batch, det_model, seg_batch, seg_model

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def build(student, teacher, scope='mmdet', checkpoint=None, **kw):
    """A distiller with explicit loss weights (so that every term acts from
    the first step; the automatic balance is tested in
    test_reference_wiring.py)."""
    init_default_scope(scope)
    # the backbone terms (the task-aware terms: tests/models/terms)
    kw.setdefault('terms', None)
    kw.setdefault('lipschitz_loss', dict(type='mmlckd.LipschitzLoss',
                                         loss_weight=1e-3))
    kw.setdefault('feature_loss', dict(type='mmlckd.OFDLoss',
                                       loss_weight=1e-4))
    for r in kw.get('response') or []:
        r['loss'] = dict(dict(loss_weight=1.0), **r['loss'])
    teacher_cfg = dict(config=dict(model=teacher, default_scope=scope),
                       checkpoint=checkpoint)
    teacher_cfg.update(kw.pop('teacher_kw', {}))
    return MODELS.build(
        dict(type='mmlckd.LipschitzDistiller', student=student,
             teacher=teacher_cfg, **kw))


def teacher_state(model):
    return {k: v.clone() for k, v in model.teacher.state_dict().items()}


FAMILIES = {
    'retinanet': (lambda: det_model('retinanet'),
                  lambda: det_model('retinanet', base=32), 'mmdet',
                  det_batch),
    'faster_rcnn': (lambda: det_model('faster_rcnn'),
                    lambda: det_model('faster_rcnn', base=32), 'mmdet',
                    det_batch),
    'deeplabv3plus': (lambda: seg_model(), lambda: seg_model(base=32),
                      'mmseg', seg_batch),
}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_train_two_iterations(family):
    s_cfg, t_cfg, scope, batch = FAMILIES[family]
    torch.manual_seed(0)
    model = build(s_cfg(), t_cfg(), scope)
    model.train()
    before = teacher_state(model)
    student_before = copy.deepcopy(model.student.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, samples = batch(model)
    for _ in range(2):
        losses = model(inputs, samples, mode='loss')
        loss, log_vars = model.parse_losses(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # expected keys, all finite
    for key in ('loss_lipschitz', 'loss_feat', 'sigma_s.backbone.0',
                'sigma_t.backbone.2'):
        assert key in log_vars, (key, sorted(log_vars))
        assert torch.isfinite(log_vars[key]).all()
    assert 'sigma_s.backbone.3' not in log_vars  # 4 stages -> 3 blocks
    # teacher: bit-identical, frozen, eval, no grads, not a submodule
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.teacher.training
    assert all(p.grad is None and not p.requires_grad
               for p in model.teacher.parameters())
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert not any(k.startswith('teacher') for k in model.state_dict())
    # the student and the connectors learned
    changed = [k for k, v in model.student.state_dict().items()
               if v.dtype.is_floating_point
               and not torch.equal(v, student_before[k])]
    assert changed
    assert all(p.grad is not None for p in model.connectors.parameters())


def test_teacher_stays_eval_and_follows_device_dtype():
    s, t, scope, _ = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    model.train()
    assert model.student.training and not model.teacher.training
    model.to(torch.float64)
    assert next(model.teacher.parameters()).dtype == torch.float64
    model.float()
    assert next(model.teacher.parameters()).dtype == torch.float32


def test_teacher_runs_only_as_deep_as_needed():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    calls = {'head': 0, 'backbone': 0}
    # (bbox_head.forward is called directly, without hooks: hook a conv)
    model.teacher.bbox_head.retina_cls.register_forward_hook(
        lambda *a: calls.__setitem__('head', calls['head'] + 1))
    model.teacher.backbone.register_forward_hook(
        lambda *a: calls.__setitem__('backbone', calls['backbone'] + 1))
    inputs, samples = batch(model)
    model.train()
    model(inputs, samples, mode='loss')
    # the backbone's last recorded layer is layer4's final ReLU: the forward
    # stopped inside the backbone, before the neck and the head
    assert calls['head'] == 0
    assert calls['backbone'] == 0  # stopped before the backbone returned


def test_default_terms_run_the_teacher_through_its_head():
    """With nothing said, the task-aware terms read the neck and the
    head's classifier, so the teacher's forward reaches the head (once per
    FPN level), and both terms are balanced."""
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope, terms='auto')
    assert sorted(model.terms) == ['feat', 'lipschitz', 'neck', 'preds']
    assert {'loss_neck', 'loss_preds'} <= set(model.balancer.terms)
    calls = {'head': 0}
    model.teacher.bbox_head.retina_cls.register_forward_hook(
        lambda *a: calls.__setitem__('head', calls['head'] + 1))
    inputs, samples = batch(model)
    model.train()
    losses = model(inputs, samples, mode='loss')
    # (a backbone-only distiller stops before the head: 0 calls)
    assert calls['head'] > 0
    assert torch.isfinite(losses['loss_preds'])


def test_response_kd_and_neck_groups_detection():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(
        s(), t(), scope,
        features='backbone+neck',
        response=[dict(student='bbox_head.retina_cls',
                       teacher='bbox_head.retina_cls', call='all',
                       loss=dict(type='mmlckd.KDLoss', activation='sigmoid',
                                 temperature=2.0))])
    inputs, samples = batch(model)
    model.train()
    losses = model(inputs, samples, mode='loss')
    assert torch.isfinite(losses['loss_kd'])
    assert 'sigma_s.neck.3' in losses and 'sigma_t.backbone.2' in losses
    losses['loss_kd'].backward()
    assert model.student.bbox_head.retina_cls.weight.grad.abs().sum() > 0


def test_response_kd_segmentation_uses_labels():
    s, t, scope, batch = FAMILIES['deeplabv3plus']
    model = build(
        s(), t(), scope, lipschitz_loss=None, feature_loss=None,
        features=[],
        response=[dict(student='decode_head.conv_seg',
                       teacher='decode_head.conv_seg', use_labels=True,
                       loss=dict(type='mmlckd.KDLoss', mode='pixel'))])
    inputs, samples = batch(model)
    model.train()
    base = model(inputs, samples, mode='loss')['loss_kd']
    for ds in samples:  # ignore everything but a few pixels
        ds.gt_sem_seg.data[:, 4:, :] = 255
    fewer = model(inputs, samples, mode='loss')['loss_kd']
    assert torch.isfinite(base) and torch.isfinite(fewer)
    assert not torch.allclose(base, fewer)


def test_export_round_trip(tmp_path):
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    model.eval()
    path = save_student(model, str(tmp_path / 'student.pth'))
    plain = MODELS.build(s())
    ckpt = torch.load(path)
    plain.load_state_dict(ckpt['state_dict'], strict=True)
    plain.eval()
    inputs, samples = batch(model)
    with torch.no_grad():
        a = model(inputs, copy.deepcopy(samples), mode='tensor')
        b = plain(inputs, copy.deepcopy(samples), mode='tensor')
    for x, y in zip(torch.utils._pytree.tree_leaves(a),
                    torch.utils._pytree.tree_leaves(b)):
        assert torch.equal(x, y)


def test_distill_weight_zero_keeps_gradients_flowing():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    model.train()
    model.distill_weight = 0.0
    inputs, samples = batch(model)
    losses = model(inputs, samples, mode='loss')
    assert float(losses['loss_lipschitz']) == 0.0
    (losses['loss_lipschitz'] + losses['loss_feat']).backward()
    grads = [p.grad for p in model.connectors.parameters()]
    assert all(g is not None for g in grads)  # used, so DDP is happy
    assert all(float(g.abs().sum()) == 0.0 for g in grads)


def test_connector_warmup_trains_only_the_connectors():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    model.train()
    inputs, samples = batch(model)

    def distill_grads(to_student):
        model.zero_grad(set_to_none=True)
        model.distill_to_student = to_student
        losses = model(inputs, copy.deepcopy(samples), mode='loss')
        (losses['loss_lipschitz'] + losses['loss_feat']).backward()
        student = [p.grad for p in model.student.backbone.parameters()]
        conn = [p.grad for p in model.connectors.parameters()]
        return student, conn

    student, conn = distill_grads(False)
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in student)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in conn)
    student, conn = distill_grads(True)
    assert sum(float(g.abs().sum()) for g in student if g is not None) > 0

    class _Runner:  # what the hook reads
        iter, max_iters = 0, 10

    runner = _Runner()
    runner.model = model
    runner.message_hub = type('Hub', (), {
        'update_scalar': staticmethod(lambda *a, **k: None)})()
    hook = ConnectorWarmupHook(iters=3)
    for it, want in ((0, False), (2, False), (3, True), (9, True)):
        runner.iter = it
        hook.before_train_iter(runner, it)
        assert model.distill_to_student is want, it
    # by epoch: the warm-up counts runner.epoch, not runner.iter
    runner.epoch, runner.iter = 0, 100
    ConnectorWarmupHook(iters=1, by_epoch=True).before_train_iter(runner, 0)
    assert model.distill_to_student is False
    runner.epoch = 1
    ConnectorWarmupHook(iters=1, by_epoch=True).before_train_iter(runner, 0)
    assert model.distill_to_student is True
    with pytest.raises(ValueError, match='iters'):
        ConnectorWarmupHook(iters=-1)
    # the weight schedule no longer touches the warm-up flag
    model.distill_to_student, runner.iter = False, 1
    DistillWeightHook(warmup=2).before_train_iter(runner, 1)
    assert model.distill_to_student is False
    assert model.distill_weight == pytest.approx(0.5)
    model.distill_weight = 1.0






def test_autocast_bf16_gives_float32_sigmas():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    model.train()
    inputs, samples = batch(model)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(inputs, samples, mode='loss')
    assert losses['loss_lipschitz'].dtype == torch.float32
    assert losses['sigma_s.backbone.0'].dtype == torch.float32
    assert all(torch.isfinite(v).all() for k, v in losses.items()
               if k.startswith(('loss_lip', 'loss_feat', 'sigma')))


# ---------------------------------------------------------------- bad input
def test_unknown_module_lists_close_matches():
    s, t, scope, _ = FAMILIES['retinanet']
    with pytest.raises(KeyError) as e:
        build(s(), t(), scope,
              features=[dict(student='backbone.layr2', teacher='backbone.layer2')])
    msg = str(e.value)
    assert "'backbone.layr2'" in msg and 'backbone.layer2' in msg
    assert 'student' in msg


def test_wrong_teacher_checkpoint_path(tmp_path):
    s, t, scope, _ = FAMILIES['retinanet']
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build(s(), t(), scope, checkpoint=str(tmp_path / 'nope.pth'))


def test_teacher_checkpoint_mismatch_is_an_error(tmp_path):
    s, t, scope, _ = FAMILIES['retinanet']
    init_default_scope(scope)
    other = MODELS.build(det_model('retinanet', base=16))  # wrong widths
    state = {k: v for k, v in other.state_dict().items()
             if not k.startswith('bbox_head')}
    path = tmp_path / 'teacher.pth'
    torch.save(dict(state_dict=state), path)
    t_model = MODELS.build(t())
    good = {k: v for k, v in t_model.state_dict().items()
            if not k.startswith('bbox_head')}
    torch.save(dict(state_dict=good), tmp_path / 'partial.pth')
    with pytest.raises(RuntimeError, match='missing keys.*allow_missing_keys'):
        build(s(), t(), scope, checkpoint=str(tmp_path / 'partial.pth'))
    # explicit opt-in: loads with a warning, the loaded part is exact
    model = build(s(), t(), scope, checkpoint=str(tmp_path / 'partial.pth'),
                  teacher_kw=dict(allow_missing_keys=True))
    assert torch.equal(model.teacher.backbone.conv1.weight,
                       good['backbone.conv1.weight'])
    # wrong shapes are never allowed
    with pytest.raises(RuntimeError, match='size mismatch'):
        build(s(), t(), scope, checkpoint=str(path),
              teacher_kw=dict(allow_missing_keys=True))


def test_distillation_checkpoint_as_teacher_hints_export(tmp_path):
    s, t, scope, _ = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'kd.pth')
    with pytest.raises(ValueError, match='export_student'):
        build(s(), t(), scope, checkpoint=str(tmp_path / 'kd.pth'))


def test_mismatched_class_counts():
    s, t, scope, _ = FAMILIES['retinanet']
    teacher = t()
    teacher.bbox_head.num_classes = 80
    with pytest.raises(ValueError, match=r'num_classes=80.*num_classes=20'):
        build(s(), teacher, scope)
    build(s(), teacher, scope, teacher_kw=dict(check_num_classes=False))


def test_mismatched_preprocessor():
    s, t, scope, _ = FAMILIES['retinanet']
    teacher = t()
    teacher.data_preprocessor.bgr_to_rgb = False
    with pytest.raises(ValueError, match='bgr_to_rgb'):
        build(s(), teacher, scope)
    teacher = t()
    teacher.data_preprocessor.std = [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match='std'):
        build(s(), teacher, scope)


def test_base_model_keys_merged_without_delete():
    s, t, scope, _ = FAMILIES['retinanet']
    with pytest.raises(TypeError, match='_delete_=True'):
        build(s(), t(), scope, backbone=dict(type='ResNet'))


def test_nan_features_raise_before_the_step():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope)
    model.train()
    inputs, samples = batch(model)
    handle = model.student.backbone.layer3.register_forward_hook(
        lambda m, a, out: out * float('nan'))
    with pytest.raises(FloatingPointError) as e:
        model(inputs, samples, mode='loss')
    handle.remove()
    # layer3's recorded feature is taken inside layer3, before the NaN is
    # injected at its output: only layer4's is named
    assert 'student backbone.layer4.1.relu:input' in str(e.value)
    assert 'layer3.1.relu' not in str(e.value)
    assert 'optimizer update' in str(e.value)


# ------------------------------------------------------------- public API
def _leaves(feats):
    """Detached copies of recorded features that collect gradients."""
    return {k: [x.detach().requires_grad_() for x in v] if isinstance(v, list)
            else v.detach().requires_grad_() for k, v in feats.items()}


COLD = dict(type='mmlckd.LipschitzLoss', loss_weight=1e-3, warm_start=False)
KD = [dict(student='bbox_head.retina_cls', teacher='bbox_head.retina_cls',
           call='all', loss=dict(type='mmlckd.KDLoss', activation='sigmoid'))]


def test_distill_terms_on_detached_leaves_equal_loss():
    s, t, scope, batch = FAMILIES['retinanet']
    torch.manual_seed(0)
    model = build(s(), t(), scope, lipschitz_loss=COLD,
                  response=copy.deepcopy(KD))
    model.train()
    inputs, samples = batch(model)
    losses = model(inputs, copy.deepcopy(samples), mode='loss')
    task, s_feats, t_feats = model.record(inputs, copy.deepcopy(samples))
    assert set(task) == {k for k in losses if k.startswith('loss_')} - {
        'loss_feat', 'loss_lipschitz', 'loss_kd'}
    assert set(s_feats) == {p.student.key for p in model.pairs} | {
        'bbox_head.retina_cls:output'}
    assert isinstance(s_feats['bbox_head.retina_cls:output'], list)
    leaves = _leaves(s_feats)
    terms, logs = model.distill_terms(leaves, t_feats,
                                      copy.deepcopy(samples))
    assert set(terms) == {'loss_feat', 'loss_lipschitz', 'loss_kd'}
    for k, v in terms.items():
        torch.testing.assert_close(v, losses[k], rtol=1e-5, atol=0)
    for k, v in logs.items():
        torch.testing.assert_close(v, losses[k], rtol=1e-5, atol=0)
    sum(terms.values()).backward()
    # the gradient stops at the leaves: the student got none
    assert all(leaves[p.student.key].grad.abs().sum() > 0
               for p in model.pairs)
    assert all(p.grad is None for p in model.student.parameters())
    assert all(not v.requires_grad for v in t_feats.values()
               if torch.is_tensor(v))


def test_groups_and_block_shapes():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope, features='backbone+neck')
    assert model.groups == {'backbone': [0, 1, 2, 3],
                            'neck': [4, 5, 6, 7, 8]}
    s_rec = model.student_recorder  # the probe calibrated both recorders
    assert s_rec.calibrated and model.teacher_recorder.calibrated
    # reference wiring: TM(connector_i(s_i), s_{i+1}): C_in is the
    # teacher's channels of pair i, C_out the student's of pair i + 1
    s_ch = [c.in_channels for c in model.connectors]
    t_ch = [c.out_channels for c in model.connectors]
    assert s_ch != t_ch
    assert model.block_shapes[('backbone', 'student')] == [
        (t_ch[i], s_ch[i + 1]) for i in range(3)]
    assert model.block_shapes[('backbone', 'teacher')] == [
        (t_ch[i], t_ch[i + 1]) for i in range(3)]
    assert len(model.block_shapes[('neck', 'student')]) == 4
    # the loss's power-iteration states were created from these shapes and
    # fit the real transmitting matrices: a step keeps the same objects
    loss = model.lipschitz_loss
    names = [loss.state_name(group, net, i)
             for (group, net), blocks in model.block_shapes.items()
             for i in range(len(blocks))]
    assert sorted(names) == sorted(loss.states.keys())
    before = {n: loss.states[n] for n in names}
    model.train()
    inputs, samples = batch(model)
    model(inputs, samples, mode='loss')
    assert all(loss.states[n] is before[n] for n in names)


def test_lipschitz_on_raw_uses_the_raw_student_maps():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope, lipschitz_on='raw', lipschitz_loss=COLD)
    model.train()
    inputs, samples = batch(model)
    _, s_feats, t_feats = model.record(inputs, samples)
    leaves = _leaves(s_feats)
    terms, logs = model.distill_terms(leaves, t_feats, samples)
    s_raw = [leaves[p.student.key] for p in model.pairs]
    t_list = [t_feats[p.teacher.key] for p in model.pairs]
    # the term is LipschitzLoss on the raw maps, without student_inputs
    ref, _ = model.lipschitz_loss(s_raw, t_list, key='backbone')
    torch.testing.assert_close(terms['loss_lipschitz'], ref, rtol=1e-6,
                               atol=0)
    s_ch = [x.shape[1] for x in s_raw]
    assert model.block_shapes[('backbone', 'student')] == [
        (s_ch[i], s_ch[i + 1]) for i in range(3)]
    terms['loss_lipschitz'].backward()
    # gradient to the raw student maps, none to the connectors (which OFD
    # alone uses), the teacher untouched
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s_raw)
    assert len(model.connectors) == len(model.pairs)
    assert all(p.grad is None for p in model.connectors.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    # without a feature loss, 'raw' needs no connectors at all
    bare = build(s(), t(), scope, lipschitz_on='raw', feature_loss=None)
    assert len(bare.connectors) == 0


def test_teacher_early_stop_false_runs_the_whole_teacher():
    s, t, scope, batch = FAMILIES['retinanet']
    inputs = None
    for stop, want in ((False, 5), (True, 0)):  # 5 pyramid levels
        model = build(s(), t(), scope, teacher_early_stop=stop)
        calls = []
        model.teacher.bbox_head.retina_cls.register_forward_hook(
            lambda *a: calls.append(1))
        if inputs is None:
            inputs, samples = batch(model)
        model.train()
        model(inputs, copy.deepcopy(samples), mode='loss')
        assert len(calls) == want, stop


def test_sigma_ratio_in_the_same_step():
    s, t, scope, batch = FAMILIES['retinanet']
    model = build(s(), t(), scope, features='backbone+neck')
    model.train()
    inputs, samples = batch(model)
    losses = model(inputs, samples, mode='loss')
    ratios = {k for k in losses if k.startswith('sigma_ratio.')}
    assert ratios == {'sigma_ratio.backbone.0', 'sigma_ratio.backbone.1',
                      'sigma_ratio.backbone.2', 'sigma_ratio.neck.0',
                      'sigma_ratio.neck.1', 'sigma_ratio.neck.2',
                      'sigma_ratio.neck.3'}
    for k in ratios:
        rest = k[len('sigma_ratio.'):]
        torch.testing.assert_close(
            losses[k], losses['sigma_s.' + rest] / losses['sigma_t.' + rest])
    loss, log_vars = model.parse_losses(losses)
    # logged, not added to the total loss
    assert 'sigma_ratio.neck.3' in log_vars
    total = sum(v.sum() if torch.is_tensor(v) else sum(x.sum() for x in v)
                for k, v in losses.items() if 'loss' in k)
    torch.testing.assert_close(loss, total)


def test_data_preprocessor_follows_the_runners_setdefault(monkeypatch):
    """As mmengine's Runner for a stock model (mmseg configs set a crop in
    ``model`` only while ``_base_`` keeps a 512 x 512 top-level one): the
    student's own data_preprocessor wins, a differing one is logged; a
    student without one gets the one given."""
    import mmlckd.models.distillers.validation as validation
    logged = []
    monkeypatch.setattr(validation, 'print_log',
                        lambda msg, **kw: logged.append(msg))
    s, t, scope, _ = FAMILIES['retinanet']
    student = s()
    other = copy.deepcopy(student['data_preprocessor'])
    other['std'] = [1.0, 1.0, 1.0]
    model = build(student, t(), scope, data_preprocessor=other)
    assert model.data_preprocessor.std.flatten().tolist() != [1.0] * 3
    assert model.data_preprocessor is model.student.data_preprocessor
    assert len(logged) == 1 and "differs in ['std']" in logged[0]
    # what mmengine's Runner passes from a config whose top-level
    # data_preprocessor is the student's (mmseg configs): nothing to say
    same = dict(copy.deepcopy(student['data_preprocessor']), _scope_=scope)
    build(student, t(), scope, data_preprocessor=same)
    assert len(logged) == 1
    # a student without one gets the one given
    bare = s()
    bare.pop('data_preprocessor')
    model = build(bare, t(), scope, data_preprocessor=dict(
        student['data_preprocessor'], _scope_=scope))
    assert model.data_preprocessor.std.flatten().tolist() == \
        pytest.approx(student['data_preprocessor']['std'])
    with pytest.raises(TypeError, match='config dict'):
        validation.check_data_preprocessor(object(), bare)
