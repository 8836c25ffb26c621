"""The distiller on batches with images without labels (model level, tiny
random-init nets, fake batches): the task loss is the labelled images'
alone, the distillation terms see every image."""
import pytest
import torch
from mmengine.structures import InstanceData

import mmlckd  # noqa: F401
from mmlckd.models.distillers.unlabelled import split_batch
from mmlckd.structures import label_map
from mmlckd.testing import det_batch, det_model, seg_batch, seg_model
from test_lipschitz_distiller import FAMILIES, build

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def _mark_unlabelled(data_samples, idx):
    """Mark ``idx`` unlabelled, as mmlckd.UnlabelledImageDataset does,
    with the empty ground truth its pipeline gives them."""
    for i in idx:
        ds = data_samples[i]
        ds.set_metainfo(dict(unlabelled=True))
        if 'gt_instances' in ds:
            ds.gt_instances = InstanceData(
                bboxes=torch.zeros(0, 4), labels=torch.zeros(0).long())
        if 'gt_sem_seg' in ds:
            ds.gt_sem_seg.data = torch.full_like(ds.gt_sem_seg.data, 255)


def _model_and_batch(family, terms='auto', seed=0):
    s_cfg, t_cfg, scope, batch = FAMILIES[family]
    torch.manual_seed(0)
    model = build(s_cfg(), t_cfg(), scope, terms=terms, balance=dict(
        iters=1, log_interval=0))
    model.train()
    inputs, samples = batch(model.student, batch=4, seed=seed)
    return model, inputs, samples


def _task(losses):
    """The student's own losses (what mmengine sums), as one number per
    name."""
    distill = ('loss_feat', 'loss_lipschitz', 'loss_kd', 'loss_neck',
               'loss_preds')
    return {k: sum(v) if isinstance(v, list) else v
            for k, v in losses.items() if 'loss' in k and k not in distill}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_task_loss_is_the_labelled_images_alone(family):
    model, inputs, samples = _model_and_batch(family)
    _mark_unlabelled(samples, [1, 3])
    torch.manual_seed(5)  # the two-stage head samples its RoIs
    mixed = model.loss(inputs, samples)
    torch.manual_seed(5)
    alone = model.student.loss(inputs[[0, 2]], [samples[0], samples[2]])
    got, want = _task(mixed), _task(alone)
    assert set(got) == set(want) and got
    for k in want:
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-5,
                                              abs=1e-7), k
    # the distillation terms saw both parts, logged apart; the loss is
    # their image-weighted mean (2 labelled + 2 unlabelled images)
    for term in ('feat', 'lipschitz', 'preds'):
        lab = mixed[f'{term}.labelled']
        unlab = mixed[f'{term}.unlabelled']
        assert float(lab) != pytest.approx(float(unlab), rel=1e-4)
    assert not any('loss' in k for k in mixed
                   if k.endswith('labelled'))


@pytest.mark.parametrize('family', ['retinanet'])
def test_task_gradient_ignores_unlabelled_images_terms_do_not(family):
    """Replace the unlabelled images by others: the task loss's gradient on
    the student is unchanged, every distillation term changes."""
    grads, terms = [], []
    for seed in (0, 1):
        model, inputs, samples = _model_and_batch(family, seed=0)
        g = torch.Generator().manual_seed(seed)
        inputs = inputs.clone()
        inputs[[1, 3]] = torch.randn(inputs[[1, 3]].shape, generator=g)
        _mark_unlabelled(samples, [1, 3])
        losses = model.loss(inputs, samples)
        task = sum(v if not isinstance(v, list) else sum(v)
                   for v in _task(losses).values())
        params = [p for p in model.student.parameters() if p.requires_grad]
        g = torch.autograd.grad(task, params, allow_unused=True,
                                retain_graph=True)
        grads.append(torch.cat([x.flatten() for x in g if x is not None]))
        terms.append({k: float(v) for k, v in losses.items()
                      if k.endswith('.unlabelled')})
    assert torch.equal(grads[0], grads[1])
    assert terms[0]
    for k in terms[0]:
        assert terms[0][k] != pytest.approx(terms[1][k], rel=1e-4), k


def test_combined_term_is_the_image_weighted_mean():
    model, inputs, samples = _model_and_batch('retinanet', terms=None)
    model.balancer = None  # explicit weights: loss = weight * term
    _mark_unlabelled(samples, [3])  # 3 labelled, 1 unlabelled
    out = model.loss(inputs, samples)
    # (the backbone losses apply their loss_weight inside: the logged
    # parts are on the scale of loss_<term>)
    for term in ('feat', 'lipschitz'):
        lab, unlab = out[f'{term}.labelled'], out[f'{term}.unlabelled']
        assert float(lab) != pytest.approx(float(unlab), rel=1e-4)
        assert float(out[f'loss_{term}']) == pytest.approx(
            float(3 * lab + unlab) / 4, rel=1e-5), term


def test_a_batch_without_labelled_images_is_an_error():
    model, inputs, samples = _model_and_batch('retinanet', terms=None)
    _mark_unlabelled(samples, range(4))
    with pytest.raises(ValueError, match='no labelled image.*MultiSource'):
        model.loss(inputs, samples)


def test_all_labelled_batch_is_unchanged():
    model, inputs, samples = _model_and_batch('retinanet', terms=None)
    assert split_batch(samples) is None
    out = model.loss(inputs, samples)
    assert not any(k.endswith('labelled') for k in out)


def test_balancer_calibrates_on_the_mixed_batch():
    """by='loss': the weight fixed after one calibration step is
    fraction * task / term, with the term of the whole mixed batch (not
    of its labelled part)."""
    s_cfg, t_cfg, scope, batch = FAMILIES['retinanet']
    torch.manual_seed(0)
    model = build(s_cfg(), t_cfg(), scope, terms=None,
                  feature_loss=dict(type='mmlckd.OFDLoss'),
                  lipschitz_loss=None,
                  balance=dict(iters=1, by='loss', log_interval=0))
    model.train()
    inputs, samples = batch(model.student, batch=4)
    _mark_unlabelled(samples, [1, 3])
    out = model.loss(inputs, samples)
    task = float(model.parse_losses(
        {k: v for k, v in out.items() if k in _task(out)})[0])
    mixed = float((out['feat.labelled'] + out['feat.unlabelled']) / 2)
    weight = float(model.balancer.weights[0])
    assert weight == pytest.approx(0.5 * task / mixed, rel=1e-5)
    assert weight != pytest.approx(
        0.5 * task / float(out['feat.labelled']), rel=1e-3)


def test_segmentation_labels_of_unlabelled_images_count_every_pixel():
    """Prediction KD leaves out ignore_index pixels of the labels; an
    unlabelled image's empty map is all ignore_index, but its pixels count
    (inside the image, not in the batch padding)."""
    model, inputs, samples = _model_and_batch('deeplabv3plus')
    # 2 of each: DeepLabV3+'s image pooling (BN) needs 2 images a forward
    _mark_unlabelled(samples, [1, 3])
    samples[1].set_metainfo(dict(img_shape=(40, 48)))
    m = label_map(samples[1])
    assert int((m == 0).sum()) == 40 * 48
    assert bool((m[40:] == 255).all()) and bool((m[:, 48:] == 255).all())
    assert torch.equal(label_map(samples[0]),
                       samples[0].gt_sem_seg.data.squeeze(0))
    out = model.loss(inputs, samples)
    assert float(out['preds.unlabelled']) > 0


def test_a_part_of_one_image_that_batch_norm_cannot_take_says_so():
    """DeepLabV3+'s image pooling is batch-normalised over the images of a
    forward; 3 labelled + 1 unlabelled image: the error names the mix."""
    model, inputs, samples = _model_and_batch('deeplabv3plus', terms=None)
    _mark_unlabelled(samples, [3])
    with pytest.raises(ValueError, match='1 unlabelled image.*per_batch'):
        model.loss(inputs, samples)

