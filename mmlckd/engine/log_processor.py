"""mmengine's ``LogProcessor`` with a distillation run's number formats."""
from typing import Tuple

from mmengine.runner import LogProcessor

from mmlckd.registry import LOG_PROCESSORS

__all__ = ['DistillLogProcessor']


class _Sci(float):
    """A float that prints as ``%.3e`` whatever the format asked for, so a
    balanced weight of ``9.573e-05`` is not printed as ``0.0001``."""

    def __format__(self, spec: str) -> str:
        return f'{float(self):.3e}'


@LOG_PROCESSORS.register_module()
class DistillLogProcessor(LogProcessor):
    """``LogProcessor`` (same arguments) that prints the keys starting with
    one of :attr:`sci_prefixes` (the distillation weights, ``weight_*``) in
    ``%.3e`` on the console, and leaves the per-pair sigmas
    (:data:`CONSOLE_HIDDEN`) off the console line. The visualizer backends
    get the same numbers as with the stock processor.

    ``mmlckd.LipschitzMonitorHook`` makes a run's stock ``LogProcessor``
    this one; a config may also name it:
    ``log_processor = dict(type='mmlckd.DistillLogProcessor', ...)``.
    """
    sci_prefixes: Tuple[str, ...] = ('weight_', )

    def get_log_after_iter(self, runner, batch_idx: int,
                           mode: str) -> Tuple[dict, str]:
        tag, log_str = super().get_log_after_iter(runner, batch_idx, mode)
        return tag, drop_console_items(log_str)

    def _collect_scalars(self, custom_cfg, runner, mode: str,
                         reserve_prefix: bool = False) -> dict:
        tag = super()._collect_scalars(custom_cfg, runner, mode,
                                       reserve_prefix)
        for key, value in tag.items():
            name = key.partition('/')[-1] if reserve_prefix else key
            if name.startswith(self.sci_prefixes) and \
                    isinstance(value, float):
                tag[key] = _Sci(value)
        return tag


#: output keys that go to the visualizer and ``lipschitz.jsonl`` but not
#: to the console line (one per feature pair or block: a line of a
#: ``backbone+neck`` run would be ~1000 characters)
CONSOLE_HIDDEN = ('sigma_s.', 'sigma_t.', 'sigma_ratio.')


def drop_console_items(log_str: str, hidden=CONSOLE_HIDDEN) -> str:
    """``log_str`` (mmengine's ``name: value`` items joined by two spaces)
    without the items whose name starts with one of ``hidden``."""
    return '  '.join(item for item in log_str.split('  ')
                     if not item.startswith(hidden))


def describe_distiller(model) -> str:
    """One log line: every recorded pair, the Lipschitz blocks behind the
    ``sigma_*.<group>.<i>`` keys, and every term with its weight mode."""
    parts = []
    pairs = getattr(model, 'pairs', [])
    parts.append(f'{len(pairs)} pairs: ' + ', '.join(
        f'[{i}] {p.student.key} <- {p.teacher.key} (group {p.group})'
        for i, p in enumerate(pairs)))
    blocks = []
    for group, idx in getattr(model, 'groups', {}).items():
        for i, (a, b) in enumerate(zip(idx[:-1], idx[1:])):
            blocks.append(f'{group}.{i} = pairs [{a}]->[{b}]')
    if blocks:
        parts.append('sigma_*.<group>.<i> blocks: ' + ', '.join(blocks))
    balancer = getattr(model, 'balancer', None)
    auto = list(balancer.terms) if balancer is not None else []
    terms = []
    for name, term in getattr(model, 'terms', {}).items():
        key = f'loss_{name}'
        weight = getattr(model, 'term_weights', {}).get(key)
        if weight is None:  # a built-in term's loss applies its own
            weight = getattr(getattr(term, 'loss', None), 'loss_weight',
                             None)
        terms.append((key, weight))
    desc = []
    for name, weight in terms:
        if name in auto:
            desc.append(f'{name} (auto: weight 0 for the {balancer.iters} '
                        f'calibration steps, then fixed by {balancer.by})')
        elif weight is not None:
            desc.append(f'{name} (fixed weight {float(weight):.3e})')
        else:
            desc.append(f'{name} (weights of its losses)')
    parts.append('terms: ' + ', '.join(desc))
    return 'distillation: ' + '; '.join(parts) + \
        ' (per-pair sigmas: lipschitz.jsonl and the visualizer)'
