"""The pluggable distillation terms (mmlckd.models.terms) inside the
distiller: what they read, that their gradients reach the student, their
weights, the balancer, and adding a term of one's own."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import MODELS, init_default_scope

import mmlckd  # noqa: F401
from mmlckd.models.losses.power_iteration import transmitting_matrix
from mmlckd.models.terms import DistillTerm, Read
from mmlckd.registry import MODELS as MMLCKD_MODELS
from mmlckd.testing import det_batch, det_model, seg_batch, seg_model

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def build(student, teacher, scope='mmdet', terms=None, **kw):
    init_default_scope(scope)
    kw.setdefault('lipschitz_loss', None)
    kw.setdefault('feature_loss', None)
    kw.setdefault('balance', None)
    return MODELS.build(dict(
        type='mmlckd.LipschitzDistiller', student=student,
        teacher=dict(config=dict(model=teacher, default_scope=scope),
                     checkpoint=None), terms=terms, **kw))


def retina():
    return det_model('retinanet'), det_model('retinanet', base=32, width=64)


def grads_of(module):
    return [p.grad for p in module.parameters() if p.requires_grad]


def test_neck_pkd_reads_every_fpn_level_and_trains_neck_and_connectors():
    model = build(*retina(), terms=dict(
        neck=dict(type='mmlckd.NeckPKDTerm', loss_weight=1.0)))
    term = model.terms['neck']
    assert [r.student.key for r in term.reads] == [
        f'neck:output[{i}]' for i in range(5)]
    # 32-channel student FPN, 64-channel teacher: one 1x1 conv per level
    assert [c.weight.shape[:2] for c in term.connectors] == \
        [torch.Size([64, 32])] * 5
    inputs, samples = det_batch(model)
    model.train()
    losses = model(inputs, samples, mode='loss')
    losses['loss_neck'].backward()
    neck = dict(model.student.neck.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in neck.items() if n.endswith('weight'))
    # PKD ignores a per-channel offset of a level, so the bias of a conv
    # whose output is a level (linearly) gets no gradient, up to rounding
    for n, p in neck.items():
        if n.startswith('fpn_convs') and n.endswith('bias'):
            assert p.grad.abs().max() < 1e-6, n
    assert all(g is not None for g in grads_of(term.connectors))
    assert model.student.bbox_head.retina_cls.weight.grad is None


@pytest.mark.parametrize('distance', ['kl', 'logit', 'correlation'])
def test_prediction_kd_on_a_dense_head(distance):
    model = build(*retina(), terms=dict(preds=dict(
        type='mmlckd.PredictionKDTerm', distance=distance, loss_weight=1.)))
    term = model.terms['preds']
    assert term.path == 'bbox_head.retina_cls'
    assert term.loss.activation == 'sigmoid'
    assert term.loss.num_classes == 20  # 9 anchors x 20 classes split
    inputs, samples = det_batch(model)
    model.train()
    loss = model(inputs, samples, mode='loss')['loss_preds']
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert model.student.bbox_head.retina_cls.weight.grad.abs().sum() > 0


def test_prediction_kd_matches_the_loss_on_recorded_logits():
    """The term is the mean over FPN levels of the loss of each level."""
    model = build(*retina(), terms=dict(preds=dict(
        type='mmlckd.PredictionKDTerm', distance='logit', loss_weight=1.)))
    inputs, samples = det_batch(model)
    model.train()
    _, s, t = model.record(inputs, samples)
    key = 'bbox_head.retina_cls:output'
    assert len(s[key]) == len(t[key]) == 5
    ref = sum(((a.reshape(2, 9, 20, *a.shape[2:]) -
                b.reshape(2, 9, 20, *b.shape[2:])).square().sum(2) / 8
               ).mean() for a, b in zip(s[key], t[key])) / 5
    terms, _ = model.distill_terms(s, t, samples)
    assert terms['loss_preds'].item() == pytest.approx(ref.item(), rel=1e-5)


def test_prediction_kd_two_stage_reads_rpn_objectness():
    model = build(det_model('faster_rcnn'),
                  det_model('faster_rcnn', base=32, width=64),
                  terms=dict(preds=dict(type='mmlckd.PredictionKDTerm',
                                        loss_weight=1.0)))
    assert model.terms['preds'].path == 'rpn_head.rpn_cls'
    inputs, samples = det_batch(model)
    model.train()
    loss = model(inputs, samples, mode='loss')['loss_preds']
    loss.backward()
    assert model.student.rpn_head.rpn_cls.weight.grad.abs().sum() > 0


def test_prediction_kd_segmentation_softmax_with_labels():
    model = build(seg_model(), seg_model(base=32), 'mmseg', terms=dict(
        preds=dict(type='mmlckd.PredictionKDTerm', loss_weight=1.0)))
    term = model.terms['preds']
    assert term.path == 'decode_head.conv_seg'
    assert term.loss.activation == 'softmax' and term.use_labels
    inputs, samples = seg_batch(model)
    model.train()
    _, s, t = model.record(inputs, samples)
    key = 'decode_head.conv_seg:output'
    labels = torch.stack([d.gt_sem_seg.data[0] for d in samples])
    lab = F.interpolate(labels[:, None].float(), size=s[key].shape[-2:],
                        mode='nearest')[:, 0]
    valid = lab != 255
    log_p_t = F.log_softmax(t[key], 1)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s[key], 1))).sum(1)
    ref = kl[valid].mean()
    terms, _ = model.distill_terms(s, t, samples)
    assert terms['loss_preds'].item() == pytest.approx(ref.item(), rel=1e-5)


def test_head_lipschitz_equals_exact_svd_per_level():
    """With a cold start long enough to converge, the term is LONDON's
    weighted MSE of the exact top singular values of the head tower's
    transmitting matrices, summed over the FPN levels."""
    model = build(*retina(), terms=dict(head_lip=dict(
        type='mmlckd.HeadLipschitzTerm', loss_weight=1.0,
        lipschitz_loss=dict(warm_start=False, cold_iters=300,
                            n_vectors=1))))
    term = model.terms['head_lip']
    paths = [r.student.key for r in term.reads]
    n = len(model.student.bbox_head.cls_convs)
    assert paths == ['bbox_head.cls_convs.0:input'] + [
        f'bbox_head.cls_convs.{i}:output' for i in range(n)] + [
        'bbox_head.retina_cls:output']
    inputs, samples = det_batch(model)
    model.train()
    _, s, t = model.record(inputs, samples)
    terms, logs = model.distill_terms(s, t, samples)
    s_maps = [s[k] for k in paths]
    t_maps = [t[k] for k in paths]
    blocks = n + 1
    # LONDON's pair weights 1/2^(N-i-1) over the N = n + 2 maps of a level
    weights = [1 / 2**(blocks - i) for i in range(blocks)]

    def sig(a, b):
        return torch.linalg.matrix_norm(
            transmitting_matrix(a.double(), b.double()), ord=2)

    ref = 0.0
    for level in range(5):
        for i in range(blocks):
            ss = sig(s_maps[i][level], s_maps[i + 1][level])
            st = sig(t_maps[i][level], t_maps[i + 1][level])
            ref += weights[i] * (ss - st).square().mean().item()
    assert terms['loss_head_lip'].item() == pytest.approx(ref, rel=1e-3)
    assert 'sigma_ratio.head' in logs


def test_head_lipschitz_sends_gradient_into_the_head_tower():
    model = build(*retina(), terms=dict(head_lip=dict(
        type='mmlckd.HeadLipschitzTerm', loss_weight=1.0)))
    inputs, samples = det_batch(model)
    model.train()
    model(inputs, samples, mode='loss')['loss_head_lip'].backward()
    grad = model.student.bbox_head.cls_convs[-1].conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.student.bbox_head.reg_convs[0].conv.weight.grad is None


def test_head_lipschitz_without_a_tower_names_the_fix():
    with pytest.raises(ValueError, match='chain='):
        build(seg_model(), seg_model(base=32), 'mmseg', terms=dict(
            head_lip=dict(type='mmlckd.HeadLipschitzTerm')))


def test_term_weights_explicit_and_auto():
    terms = dict(neck=dict(type='mmlckd.NeckPKDTerm', loss_weight=0.25),
                 preds=dict(type='mmlckd.PredictionKDTerm'))
    model = build(*retina(), terms=terms, balance=dict(iters=2))
    assert model.term_weights == {'loss_neck': 0.25}
    assert 'loss_preds' in model.balancer.terms
    assert 'loss_neck' not in model.balancer.terms
    inputs, samples = det_batch(model)
    model.train()
    _, s, t = model.record(inputs, samples)
    raw, _ = model.distill_terms(s, t, samples)
    losses = model(inputs, samples, mode='loss')
    assert losses['loss_neck'].item() == pytest.approx(
        0.25 * raw['loss_neck'].item(), rel=1e-5)
    assert losses['loss_preds'].item() == 0.0  # calibrating: weight 0


def test_bad_terms_are_named():
    with pytest.raises(ValueError, match='taken'):
        build(*retina(), terms=dict(feat=dict(type='mmlckd.NeckPKDTerm')))
    with pytest.raises(TypeError, match='DistillTerm'):
        build(*retina(), terms=dict(x=dict(type='mmlckd.PKDLoss')))
    with pytest.raises(KeyError, match='Close matches'):
        build(*retina(), terms=dict(x=dict(type='mmlckd.NeckPKDTerm',
                                           path='nek')))
    model = build(*retina(), terms=dict(neck=None), feature_loss=dict(
        type='mmlckd.OFDLoss', loss_weight=1.0))
    assert list(model.terms) == ['feat']  # the built-in OFD term only


@MMLCKD_MODELS.register_module(force=True)
class _FirstLevelMSE(DistillTerm):
    """A user's term: one module ..."""

    def bind(self, student, teacher):
        return [Read.same('neck', index=0, call='first')]

    def build(self, student, teacher):
        self.proj = torch.nn.Conv2d(student[0].size(1), teacher[0].size(1), 1)

    def forward(self, student, teacher, data_samples=None):
        return F.mse_loss(self.proj(student[0]), teacher[0])


def test_a_new_term_is_one_module_and_one_config_line():
    model = build(*retina(), terms=dict(  # ... and one config line
        mine=dict(type='mmlckd._FirstLevelMSE', loss_weight=1.0)))
    inputs, samples = det_batch(model)
    model.train()
    losses = model(inputs, samples, mode='loss')
    losses['loss_mine'].backward()
    assert model.terms['mine'].proj.weight.grad is not None
    assert any(k.startswith('terms.mine.proj') for k in model.state_dict())


def test_auto_terms_follow_the_model():
    from mmlckd.models.distillers.term_runner import TASK_AWARE
    model = build(*retina(), terms='auto', balance=dict())
    assert set(model.terms) == set(TASK_AWARE)
    seg = build(seg_model(), seg_model(base=32), 'mmseg', terms='auto',
                balance=dict())
    # DeepLabV3+: no neck, no conv tower the head term knows
    assert set(seg.terms) == set(TASK_AWARE) - {'neck', 'head_lip'}
    with pytest.raises(TypeError, match="'auto'"):
        build(*retina(), terms='all')


def _zero_outputs(module):
    """Records, per call of ``module``, whether it returned all zeros."""
    seen = []
    module.register_forward_hook(
        lambda m, args, out: seen.append(bool((out == 0).all())))
    return seen


def test_teacher_skips_the_box_branch_no_term_reads():
    """Prediction KD and the neck term read the classifier and the FPN
    only: the teacher's box branch returns zeros in the distiller's teacher
    forward instead of running, the losses are those of the full forward,
    and the teacher's own predict still runs it."""
    model = build(*retina(), terms=dict(preds=dict(
        type='mmlckd.PredictionKDTerm', loss_weight=1.), neck=dict(
            type='mmlckd.NeckPKDTerm', loss_weight=1.)))
    head = model.teacher.bbox_head
    assert model.teacher_recorder.skipped == list(head.reg_convs) + [
        head.retina_reg]
    zeros = _zero_outputs(head.retina_reg)
    inputs, samples = det_batch(model)
    model.train()
    skipped = model(inputs, samples, mode='loss')
    assert zeros and all(zeros)
    zeros.clear()
    model.teacher_recorder.skip_enabled = False
    full = model(inputs, samples, mode='loss')
    assert zeros and not any(zeros)
    for key in ('loss_preds', 'loss_neck'):
        torch.testing.assert_close(skipped[key], full[key], rtol=0, atol=0)
    zeros.clear()
    with torch.no_grad():
        model.teacher.predict(inputs, samples)
    assert zeros and not any(zeros)
    # a deep copy's skipped modules are its own
    import copy
    twin = copy.deepcopy(head)
    assert twin.retina_reg.forward.__self__ is twin.retina_reg


def test_teacher_skips_nothing_a_term_reads_or_when_told():
    model = build(*retina(), terms=dict(lip=dict(
        type='mmlckd.HeadLipschitzTerm', tower='reg_convs', loss_weight=1.)))
    # the box tower's convs are read now; the classification tower and
    # the two output convs are not
    head = model.teacher.bbox_head
    assert model.teacher_recorder.skipped == list(head.cls_convs) + [
        head.retina_cls, head.retina_reg]
    init_default_scope('mmdet')
    student, teacher = retina()
    off = MODELS.build(dict(
        type='mmlckd.LipschitzDistiller', student=student, teacher=dict(
            config=dict(model=teacher, default_scope='mmdet'),
            checkpoint=None, skip_unread=False),
        lipschitz_loss=None, feature_loss=None, balance=None,
        terms=dict(preds=dict(type='mmlckd.PredictionKDTerm',
                              loss_weight=1.))))
    assert off.teacher_recorder.skipped == []
