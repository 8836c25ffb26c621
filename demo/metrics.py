"""The test metric's own noise: a bootstrap over the test images.

:class:`KeepTestResultsHook` keeps the per-image results that the test
metric (mmdet's ``VOCMetric`` or mmseg's ``IoUMetric``) collected, and
:func:`bootstrap_se` recomputes the metric on resamples of the test images
(with replacement) to give its standard error.
"""
from typing import List

import numpy as np
from mmengine.hooks import Hook

__all__ = ['KeepTestResultsHook', 'bootstrap_se']


class KeepTestResultsHook(Hook):
    """Keeps a copy of the test metric's per-image results (they are
    cleared once the metric is computed). Wraps the ``compute_metrics`` of
    this run's metric instance only."""

    def __init__(self):
        self.results: List = []

    def before_test_epoch(self, runner) -> None:
        metric = runner.test_loop.evaluator.metrics[0]
        compute = metric.compute_metrics

        def keep_then_compute(results):
            self.results = list(results)
            return compute(results)

        metric.compute_metrics = keep_then_compute


def _det_map(results: list, idx: np.ndarray) -> float:
    from mmdet.evaluation.functional import eval_map
    anns = [results[i][0] for i in idx]
    dets = [results[i][1] for i in idx]
    mean_ap, _ = eval_map(dets, anns, iou_thr=0.5, dataset='voc07',
                          logger='silent', eval_mode='11points',
                          use_legacy_coordinate=True, nproc=1)
    return float(mean_ap)


def _seg_miou(stats: np.ndarray, idx: np.ndarray) -> float:
    inter, union = stats[idx, 0].sum(0), stats[idx, 1].sum(0)
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter / union
    return float(np.nanmean(iou))


def bootstrap_se(task: str, results: list, num: int = None,
                 seed: int = 0) -> float:
    """Bootstrap standard error of the test metric (as a fraction for
    detection mAP, in percent for segmentation mIoU, as the metrics
    report them). ``num`` resamples: 20 for detection, 200 for
    segmentation by default."""
    if len(results) < 2:
        return float('nan')
    rng = np.random.default_rng(seed)
    n = len(results)
    if task == 'det':
        fn, data, num = _det_map, results, num or 20
    else:  # IoUMetric: (intersect, union, pred, label) per image
        data = np.stack([np.stack([np.asarray(r[0]), np.asarray(r[1])])
                         for r in results]).astype(np.float64)
        fn, num = _seg_miou, num or 200
    values = [fn(data, rng.integers(0, n, n)) for _ in range(num)]
    scale = 100.0 if task == 'seg' else 1.0
    return float(np.std(values, ddof=1)) * scale
