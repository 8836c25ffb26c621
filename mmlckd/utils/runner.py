"""Config adjustments shared by tools/train.py, tools/test.py and the demo."""
from mmengine.config import Config

__all__ = ['is_distill_cfg', 'prepare_distill_cfg', 'student_test_cfg']

_DISTILLERS = ('LipschitzDistiller', 'mmlckd.LipschitzDistiller')


def is_distill_cfg(cfg: Config) -> bool:
    return cfg.get('model', {}).get('type', None) in _DISTILLERS


def prepare_distill_cfg(cfg: Config) -> None:
    """For distillation configs: make sure ``mmlckd`` is imported by every
    worker and that the student is exported at the end of training."""
    if not is_distill_cfg(cfg):
        return
    imports = cfg.get('custom_imports', None) or dict(imports=[])
    if 'mmlckd' not in imports.get('imports', []):
        imports['imports'] = list(imports.get('imports', [])) + ['mmlckd']
    imports.setdefault('allow_failed_imports', False)
    cfg.custom_imports = imports
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any('StudentExportHook' in str(h.get('type', '')) for h in hooks):
        hooks.append(dict(type='mmlckd.StudentExportHook'))
    cfg.custom_hooks = hooks


def student_test_cfg(cfg: Config) -> bool:
    """Replace a distiller model by its student (in place) for testing, so
    no teacher (nor its checkpoint) is needed. Returns True if replaced."""
    if not is_distill_cfg(cfg):
        return False
    cfg.model = cfg.model.student
    cfg.custom_hooks = [
        h for h in (cfg.get('custom_hooks', None) or [])
        if not str(h.get('type', '')).startswith('mmlckd.')
    ]
    return True
