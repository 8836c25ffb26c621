"""Build-time checks of :class:`LipschitzDistiller` settings that would
otherwise train silently with no (or a wrong) distillation signal. Each
check has a named option that allows the setting on purpose."""
from typing import Optional, Sequence

from mmengine.logging import print_log

from .feature_pairs import LIPSCHITZ_WIRINGS

__all__ = ['validate_distiller', 'check_arguments',
           'check_data_preprocessor']


def _negative_weights(loss_cfgs: dict) -> list:
    bad = []
    for name, cfg in loss_cfgs.items():
        cfgs = cfg if isinstance(cfg, (list, tuple)) else [cfg]
        for i, c in enumerate(cfgs):
            if not isinstance(c, dict):
                continue
            w = c.get('loss_weight', None)
            if isinstance(w, (int, float)) and w < 0:
                where = name if not isinstance(cfg, (list, tuple)) \
                    else f'{name}[{i}]'
                bad.append(f'{where}.loss_weight={w}')
    return bad


def validate_distiller(model, features, shapes: Sequence[tuple],
                       loss_cfgs: dict,
                       allow_empty_features: bool = False,
                       allow_negative_weights: bool = False,
                       allow_resize: bool = False,
                       probe_size: Optional[tuple] = None) -> None:
    """Raise ValueError on settings that silently defeat distillation.

    * ``features=[]`` while a feature / Lipschitz loss is set (or nothing
      else is distilled): the run would train the student alone.
    * a negative ``loss_weight``: the term is maximised (total losses of
      -10^4 and a diverging student).
    * a feature pair whose student and teacher maps differ in spatial size
      at probe time: usually stages paired one off (stride 4 vs 8), which
      the losses would silently resize.
    """
    empty = isinstance(features, (list, tuple)) and len(features) == 0
    uses_features = model.lipschitz_loss is not None or \
        model.feature_loss is not None
    if empty and (uses_features or not model.response_cfgs) and \
            not allow_empty_features:
        terms = [n for n, m in (('lipschitz_loss', model.lipschitz_loss),
                                ('feature_loss', model.feature_loss))
                 if m is not None]
        raise ValueError(
            'features=[] distils no features, so ' +
            (f'{" and ".join(terms)} would do nothing' if terms else
             'nothing is distilled at all') +
            ' and the student trains alone. Use features=\'backbone\' (the '
            'default), list the modules to distil, or set ' +
            (f'{" and ".join(terms)}=None' if terms else 'response=[...]') +
            '; pass allow_empty_features=True if this is intended.')
    bad = _negative_weights(loss_cfgs)
    if bad and not allow_negative_weights:
        raise ValueError(
            f'negative loss weights {bad}: a negative weight maximises that '
            'term (the total loss runs to large negative values and the '
            'student diverges). Use weights >= 0 (0 switches a term off, '
            'or set the loss to None); pass allow_negative_weights=True if '
            'this is intended.')
    if allow_resize:
        return
    off = []
    for pair, (s_shape, t_shape) in zip(model.pairs, shapes):
        if tuple(s_shape[2:]) != tuple(t_shape[2:]):
            off.append(f'{pair.student.key} {tuple(s_shape[2:])} vs '
                       f'{pair.teacher.key} {tuple(t_shape[2:])}')
    if off:
        raise ValueError(
            f'{len(off)} feature pairs differ in spatial size between '
            f'student and teacher at probe time: {off[:4]}. The stages are '
            'probably paired one off (e.g. stride 4 with stride 8): check '
            'features= and the backbones\' out_indices/strides. Pass '
            'allow_resize=True to let the losses resize the student\'s '
            'maps on purpose.')


def check_arguments(unexpected: dict, lipschitz_on: str,
                    known: Sequence[str] = ()) -> None:
    """Errors, with the fix, for arguments the distiller does not take
    (``known``: the ones it takes, for a likely spelling)."""
    if unexpected:
        did = typo_hints(sorted(unexpected), known, cutoff=0.75)
        base = '' if len(did) == len(unexpected) else (
            '. If these are your base model\'s keys '
            '(backbone, neck, bbox_head, ...), the distiller dict was '
            'merged into `_base_.model`: add `_delete_=True` to '
            '`model=dict(...)` and pass the base model as `student=`')
        raise TypeError(
            'LipschitzDistiller got unexpected config keys '
            f'{sorted(unexpected)}' +
            (f' (a typo? {", ".join(did)})' if did else '') + base + '.')
    if lipschitz_on not in LIPSCHITZ_WIRINGS:
        raise ValueError(f'lipschitz_on must be one of {LIPSCHITZ_WIRINGS}'
                         f', got {lipschitz_on!r}')


def _plain(cfg):
    """A config value without ``_scope_`` keys, tuples as lists (to compare
    configs that went through the registry or a dump)."""
    if isinstance(cfg, dict):
        return {k: _plain(v) for k, v in cfg.items() if k != '_scope_'}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def check_data_preprocessor(data_preprocessor, student: dict) -> dict:
    """The student config to build, given the ``data_preprocessor`` the
    distiller got. The student's data preprocessor serves both nets.

    mmengine's Runner passes a config's top-level ``data_preprocessor`` to
    the model unless the model config has its own (``setdefault``); a stock
    mmseg model config always has its own, so a top-level one (512 x 512
    crops from ``_base_``) never overrides a model's (a smaller crop set in
    ``model`` only). The distiller does the same for its student: the
    student's own ``data_preprocessor`` wins (a differing one is logged,
    naming the keys that differ), and a student without one gets the one
    given."""
    if data_preprocessor is None:
        return student
    own = student.get('data_preprocessor', None) \
        if isinstance(student, dict) else None
    if own is None:
        if not isinstance(data_preprocessor, dict):
            raise TypeError(
                'LipschitzDistiller: data_preprocessor must be a config '
                f'dict, got {type(data_preprocessor).__name__}; set it in '
                'student=dict(..., data_preprocessor=...)')
        return dict(student, data_preprocessor=data_preprocessor)
    given, mine = _plain(data_preprocessor), _plain(own)
    if given != mine:
        keys = sorted(k for k in set(given) | set(mine)
                      if given.get(k) != mine.get(k)) \
            if isinstance(given, dict) else ['type']
        print_log(
            'LipschitzDistiller: the student\'s own data_preprocessor is '
            'used for both nets; the model\'s (or the config\'s top-level) '
            f'data_preprocessor, which differs in {keys}, is ignored, as '
            'mmengine\'s Runner ignores a top-level data_preprocessor for a '
            'model that has its own. To change it, set '
            'model.student.data_preprocessor.', logger='current',
            level=30)
    return student


def typo_hints(unknown: Sequence[str], known: Sequence[str],
               cutoff: float = 0.6) -> list:
    """``"'key' -> 'likely'?"`` for every key of ``unknown`` with a close
    match in ``known`` (the settings a dict takes)."""
    import difflib
    return [f'{k!r} -> {c[0]!r}?' for k in unknown
            for c in [difflib.get_close_matches(k, known, 1, cutoff)] if c]
