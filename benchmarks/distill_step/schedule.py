"""The amortised cost over a recipe's schedule, and the targets.

A training run of the default distiller has three kinds of step
(:data:`~.common.bench.PHASES`): the balancer's ``iters`` calibration steps
first, then a gradient-share step at every ``log_interval``-th step, steady
steps otherwise; the NaN guard runs in every step. The amortised cost is
the mean step time over the run, from the measured time of each kind
weighted by its count. The counts come from the recipe's config (loop,
dataset, batch size, GPUs) and the built distiller's balancer settings.
"""
import math
from typing import Dict, Optional

#: images in the PASCAL VOC lists the recipes train on (the official
#: ImageSets files; ``aug.txt`` is the 10582-image VOC12aug list that
#: mmseg's ``voc_aug.py`` converter writes; the iteration-based
#: segmentation schedule does not need these)
VOC_LIST_IMAGES = {
    'VOC2007/ImageSets/Main/trainval.txt': 5011,
    'VOC2012/ImageSets/Main/trainval.txt': 11540,
    'ImageSets/Segmentation/train.txt': 1464,
    'ImageSets/Segmentation/aug.txt': 10582,
}

#: the targets of issue 21 (CPU, 1 and 2 threads): ratio -> upper bound
TARGETS = dict(steady=1.05, amortised=1.06, memory=1.10, calibration=1.3)


def dataset_images(cfg) -> int:
    """Images in one pass over a dataset config (repeats included)."""
    kind = cfg.get('type')
    if kind == 'RepeatDataset':
        return int(cfg['times']) * dataset_images(cfg['dataset'])
    if kind == 'ConcatDataset':
        return sum(dataset_images(d) for d in cfg['datasets'])
    ann = cfg.get('ann_file', '')
    for path, n in VOC_LIST_IMAGES.items():
        if ann.endswith(path):
            return n
    raise KeyError(f'the number of images of {ann!r} is not known')


def schedule_iters(cfg) -> dict:
    """Iterations per GPU of the recipe's schedule and how they follow from
    its config."""
    loop = cfg.train_cfg
    if loop.get('type') == 'IterBasedTrainLoop':
        n = int(loop['max_iters'])
        return dict(iters=n, how=f'IterBasedTrainLoop max_iters={n}')
    loader = cfg.train_dataloader
    batch = int(loader['batch_size'])
    gpus = int(cfg.auto_scale_lr['base_batch_size']) // batch
    images = dataset_images(loader['dataset'])
    epochs = int(loop['max_epochs'])
    # DefaultSampler pads every rank to ceil(N / GPUs) samples; the last
    # batch is kept
    per_epoch = math.ceil(math.ceil(images / gpus) / batch)
    return dict(iters=epochs * per_epoch, how=(
        f'{epochs} epochs x ceil(ceil({images} images / {gpus} GPUs) / '
        f'{batch}) = {epochs} x {per_epoch}; the GPUs from auto_scale_lr '
        f'base_batch_size {gpus * batch} / batch_size {batch}'))


def phase_counts(total: int, balancer) -> Dict[str, int]:
    """How many steps of each phase a ``total``-step run has. Of the
    calibration, only the second half measures its statistics (the extra
    backwards); its first half costs a steady step (the auto terms weigh
    0 there, their graphs are still built) and counts as one."""
    if balancer is None:
        return dict(steady=total)
    calib = min(balancer.iters, total) if balancer.terms else 0
    measured = max(0, calib - balancer.first_measured)
    every = balancer.log_interval
    # share steps: 0-based steps s >= calib with (s + 1) % every == 0
    share = total // every - calib // every if every > 0 else 0
    return dict(calibration=measured, share=share,
                steady=total - measured - share)


def amortised_time(times: dict, counts: Dict[str, int], clock: str
                   ) -> float:
    """The mean step time over the run (``times[phase][clock]``)."""
    total = sum(counts.values())
    return sum(n * times[p][clock] for p, n in counts.items() if n) / total


def verdict(ratios: Dict[str, Optional[float]]) -> str:
    """``PASS``, or ``MISS`` with the ratios above their targets; a ratio
    not measured (None) is named as such."""
    missed = [k for k, bound in TARGETS.items()
              if ratios.get(k) is not None and not ratios[k] <= bound]
    alone = ratios.get('steady_alone')
    if alone is not None and not alone <= TARGETS['steady']:
        missed.append(f"alone ({ratios.get('steady_alone_term')})")
    skipped = [k for k in TARGETS if ratios.get(k) is None]
    out = 'MISS: ' + ', '.join(missed) if missed else 'PASS'
    return out + (f" ({', '.join(skipped)} not measured)" if skipped else '')


def variant_ratios(variant: dict) -> Dict[str, dict]:
    """``clock -> {steady, amortised, calibration}`` of one variant's
    medians: the first two over (student step + teacher forward), the
    last over the steady step (None without a calibration)."""
    t, counts = variant['times'], variant['counts']
    out = {}
    for c in ('wall', 'cpu'):
        base = t['student'][c] + t['teacher'][c]
        out[c] = dict(
            steady=t['steady'][c] / base,
            amortised=amortised_time(t, counts, c) / base,
            calibration=t['calibration'][c] / t['steady'][c]
            if 'calibration' in t else None)
    return out


def family_ratios(res: dict, clock: str) -> dict:
    """The ratios of the targets for one family (the default distiller;
    ``steady_alone``: the largest steady ratio of a term alone), each
    variant's ratios stored in it."""
    for v in res['variants'].values():
        v['ratios'] = variant_ratios(v)
    out = dict(res['variants']['default']['ratios'][clock])
    alone = {k[len('alone:'):]: v['ratios'][clock]['steady']
             for k, v in res['variants'].items() if k.startswith('alone:')}
    out['steady_alone'] = max(alone.values()) if alone else None
    out['steady_alone_term'] = max(alone, key=alone.get) if alone else None
    mem = res.get('memory')
    out['memory'] = mem['distill']['peak'] / (
        mem['student']['peak'] + mem['teacher']['peak']) if mem else None
    out['verdict'] = verdict(out)
    return out
