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
    ``%.3e`` on the console. The visualizer backends get the same numbers
    as with the stock processor.

    ``mmlckd.LipschitzMonitorHook`` makes a run's stock ``LogProcessor``
    this one; a config may also name it:
    ``log_processor = dict(type='mmlckd.DistillLogProcessor', ...)``.
    """
    sci_prefixes: Tuple[str, ...] = ('weight_', )

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
