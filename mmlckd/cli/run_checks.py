"""Checks of a built distillation run that would otherwise train (or end)
without a word: before training (:func:`check_distill_setup`) and after
it (:func:`check_finished`)."""
from typing import List, Optional, Tuple

from mmengine.hooks import Hook

from mmlckd.engine.hooks.safe_checkpoint_hook import SafeCheckpointHook
from mmlckd.engine.hooks.utils import unwrap_model
from mmlckd.models.distillers.balance import first_measured_step
from mmlckd.models.distillers.guard import non_finite
from .data_checks import empty_after_filter, unknown_class_annotations

__all__ = ['check_finished', 'frozen_recorded_layers',
           'distill_setup_problems', 'check_distill_setup',
           'CalibrationPositivesHook']


def check_finished(runner) -> None:
    """A run that ends with weights it could not save (NaN/Inf: checkpoints
    refused by ``SafeCheckpointHook``, the student not exported) exits
    non-zero, naming the last finite checkpoint."""
    hooks = [h for h in runner.hooks if isinstance(h, SafeCheckpointHook)]
    refused = next((h.non_finite_at for h in hooks
                    if getattr(h, 'non_finite_at', None)), None)
    bad = non_finite(unwrap_model(runner).state_dict())
    if refused is None and not bad:
        return
    last = next((h.last_ckpt for h in hooks if h.last_ckpt), None)
    msg = ('error: training ended with non-finite (NaN/Inf) weights' +
           (f' (from step {refused} on, no checkpoint was saved)'
            if refused else f' ({len(bad)} tensors, e.g. {bad[:3]})') +
           '; nothing non-finite was written, and a distillation run did not '
           'export its student. ' +
           (f'The last finite checkpoint is {last}. ' if last else '') +
           'Restart from it with a lower learning rate: --cfg-options '
           'load_from=<that checkpoint> optim_wrapper.optimizer.lr=<lower> '
           '(not --resume, which keeps the checkpoint\'s lr), or turn the '
           'NaN guard back on (model.nan_guard=True) to stop at the first '
           'non-finite step.')
    runner.logger.error(msg)
    raise SystemExit(msg)


def _upstream_trainable(student, path: str) -> bool:
    """Whether a parameter that may feed ``student.<path>`` is trainable:
    those of the modules registered up to the end of that module's subtree
    (registration order follows the forward in the OpenMMLab backbones,
    necks and heads), so False means the recorded feature cannot pass a
    gradient to the student."""
    for name, module in student.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            return True
        if name == path:  # the rest of the subtree follows it
            return any(p.requires_grad for p in module.parameters())
    return False


def frozen_recorded_layers(model) -> Tuple[List[str], List[str]]:
    """(the student's recorded layers that no trainable parameter feeds,
    all the student's recorded layers) of a distiller."""
    recorder = getattr(model, 'student_recorder', None)
    if recorder is None:
        return [], []
    paths = list(dict.fromkeys(s.path for s in recorder.specs))
    return [p for p in paths if not _upstream_trainable(model.student, p)
            ], paths


def distill_setup_problems(model, max_iters: Optional[int]
                           ) -> Tuple[List[str], List[str]]:
    """(errors, warnings) of a built distiller that would otherwise train
    without a word: a student whose recorded layers are all frozen, a
    calibration as long as the run, a multi-call module distilled at its
    last call only because ``call`` was not set."""
    errors: List[str] = []
    warnings: List[str] = []
    frozen, paths = frozen_recorded_layers(model)
    if frozen:
        what = (f'the student\'s recorded layers {frozen} have no trainable '
                'parameter up to them (frozen, e.g. by '
                'backbone.frozen_stages or requires_grad=False)')
        if len(frozen) == len(paths):
            errors.append(
                f'{what}: the distillation terms can change only the '
                'connectors, never the student, so the exported "distilled" '
                'student would not be distilled (with automatic weights the '
                'calibration finds no student gradient either). Unfreeze '
                'them (e.g. a lower backbone.frozen_stages) or record '
                'trainable layers (features=[...], e.g. the neck).')
        else:
            warnings.append(
                f'{what}: their distillation terms train only the '
                f'connectors. The other recorded layers '
                f'{[p for p in paths if p not in frozen]} are distilled.')
    balancer = getattr(model, 'balancer', None)
    if balancer is not None and getattr(balancer, 'terms', None) and \
            max_iters is not None and balancer.iters >= max_iters:
        errors.append(
            f'model.balance.iters={balancer.iters} (the calibration, during '
            f'which the automatic distillation weights of '
            f'{list(balancer.terms)} are 0) is not shorter than the run '
            f'({max_iters} iterations): every distillation weight would stay '
            '0 for the whole run, and the exported student would not be '
            'distilled. Lower balance.iters (e.g. to '
            f'{max(1, max_iters // 10)}), train longer, or give the losses '
            'explicit loss_weight values.')
    recorder = getattr(model, 'student_recorder', None)
    counts = dict(getattr(recorder, '_expected', None) or {})
    for r in getattr(model, 'response_cfgs', None) or []:
        spec = r.get('student_spec')
        n = counts.get(getattr(spec, 'key', None), 1)
        if 'call' not in r and n > 1:
            warnings.append(
                f'response distillation of {spec.path!r}: that module runs '
                f'{n} times per forward (e.g. once per FPN level) and the '
                "entry sets no call, so only its last call is distilled. Set "
                "call='all' in that response entry to distil every call, or "
                "call='last' to keep only the last one (and silence this).")
    return errors, warnings


def check_distill_setup(runner) -> List[str]:
    """:func:`distill_setup_problems` for ``tools/train.py``: warnings and
    errors are logged (console and the work dir's log); an error stops
    the run before training (SystemExit). Returns the warnings."""
    model = unwrap_model(runner)
    try:  # builds the train loop and its dataset
        max_iters = runner.max_iters
        data_warnings = unknown_class_annotations(
            runner.train_dataloader.dataset)
    except Exception as e:  # an unusual loop: runner.train() says what fails
        if 'need at least one array to concatenate' in str(e):
            runner.logger.error(empty_after_filter(runner.cfg))
            raise SystemExit('error: ' + empty_after_filter(runner.cfg)) \
                from None
        max_iters, data_warnings = None, []
    for w in data_warnings:
        runner.logger.warning(w)
    if getattr(model, 'student_recorder', None) is None:
        return data_warnings
    errors, warnings = distill_setup_problems(model, max_iters)
    balancer = getattr(model, 'balancer', None)
    if balancer is not None and getattr(balancer, 'terms', None):
        runner.register_hook(_CalibrationHook(balancer.iters))
    for w in warnings:
        runner.logger.warning(w)
    for e in errors:
        runner.logger.error(e)
    if errors:
        raise SystemExit('error: ' + '\nerror: '.join(errors))
    return data_warnings + warnings


class CalibrationPositivesHook:
    """Counts the ground-truth boxes of the batches the loss balancer
    measures (calibration steps ``first_measured_step(iters) .. iters -
    1``) and warns, once, when none of them holds a box: the weights are
    then scaled against a background-only task loss (up to 100x off)."""

    def __init__(self, iters: int):
        self.iters = int(iters)
        self.boxes: List[int] = []

    @staticmethod
    def count_boxes(data_batch) -> Optional[int]:
        samples = data_batch.get('data_samples', None) if isinstance(
            data_batch, dict) else None
        counts = [len(s.gt_instances) for s in samples or []
                  if hasattr(s, 'gt_instances')]
        return sum(counts) if counts else None

    def record(self, step: int, data_batch) -> Optional[str]:
        """Called before training step ``step`` (0-based); returns the
        warning once the calibration ended without a positive box."""
        if not first_measured_step(self.iters) <= step < self.iters:
            return None
        n = self.count_boxes(data_batch)
        if n is None:
            return None
        self.boxes.append(n)
        if step != self.iters - 1 or any(self.boxes):
            return None
        return (f'loss balance: the {len(self.boxes)} batches the '
                f'calibration measured (iterations '
                f'{first_measured_step(self.iters) + 1}-'
                f'{self.iters}) hold no ground-truth box, so the automatic '
                'weights are scaled against a background-only task loss '
                '(they can be 100x off). Set filter_cfg.filter_empty_gt='
                'True on the training set, a longer balance.iters, or '
                'explicit loss_weight values.')


class _CalibrationHook(Hook):
    """:class:`CalibrationPositivesHook` on the runner's batches."""
    priority = 'LOW'

    def __init__(self, iters: int):
        self.check = CalibrationPositivesHook(iters)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        msg = self.check.record(runner.iter, data_batch)
        if msg:
            runner.logger.warning(msg)
