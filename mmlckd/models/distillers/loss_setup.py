"""The distiller's loss arguments into losses and a balancer: which term
the :class:`~.balance.LossBalancer` weights (no ``loss_weight``, or
``'auto'``), and the default loss of an argument whose config names no
``type``."""
import math
from typing import List, Optional, Sequence, Tuple

import torch.nn as nn

from mmlckd.registry import MODELS
from .balance import LossBalancer
from .validation import typo_hints

__all__ = ['DEFAULT_LOSS_TYPES', 'with_default_type', 'auto_weight',
           'check_balance_keys', 'build_losses']

#: the loss each of the distiller's loss arguments builds when its config
#: names no ``type``: ``--cfg-options model.lipschitz_loss.distance=l1``
#: or ``model.feature_loss.loss_weight=1e-5`` changes one field of the
#: default loss (mmengine merges the option into an empty dict when the
#: config leaves the argument to its default)
DEFAULT_LOSS_TYPES = {
    'lipschitz_loss': 'mmlckd.LipschitzLoss',
    'feature_loss': 'mmlckd.OFDLoss',
}


def with_default_type(cfg: Optional[dict], what: str) -> Optional[dict]:
    """``cfg`` with ``type`` set to the default loss of the argument
    ``what`` (:data:`DEFAULT_LOSS_TYPES`) when it names none."""
    if cfg is None or 'type' in cfg:
        return cfg
    return dict(type=DEFAULT_LOSS_TYPES[what], **cfg)


def auto_weight(cfg: Optional[dict], what: str
                ) -> Tuple[Optional[dict], bool]:
    """``(cfg with loss_weight=1.0, True)`` if the loss config ``cfg``
    leaves its weight to the balancer (no ``loss_weight`` or ``'auto'``),
    else ``(cfg, False)``; ``what`` names the config in errors."""
    if cfg is None:
        return None, False
    cfg = dict(cfg)
    weight = cfg.get('loss_weight', 'auto')
    if weight == 'auto':
        cfg['loss_weight'] = 1.0
        return cfg, True
    if not isinstance(weight, (int, float)):
        raise TypeError(f'{what}.loss_weight must be a number or \'auto\', '
                        f'got {weight!r}')
    if not math.isfinite(weight):
        raise ValueError(
            f'{what}.loss_weight={weight} is not a finite number: every '
            'step would stop on a non-finite loss. Give a finite weight '
            '(e.g. 1e-4; 0 switches the term off) or \'auto\'.')
    return cfg, False


BALANCE_KEYS = ('fraction', 'iters', 'by', 'log_interval')


def check_balance_keys(balance: dict) -> None:
    """An unknown ``balance`` setting (a typo such as ``iter``) is an error
    naming the settings there are, not a ``LossBalancer.__init__()``
    TypeError."""
    unknown = [k for k in balance if k not in BALANCE_KEYS]
    if unknown:
        did = typo_hints(unknown, BALANCE_KEYS)
        raise ValueError(
            f'model.balance has no setting {unknown}' +
            (f' ({", ".join(did)})' if did else '') +
            f'; its settings are {list(BALANCE_KEYS)} (balance=None turns '
            'the automatic weights off).')


def build_losses(lipschitz_loss: Optional[dict],
                 feature_loss: Optional[dict], response_cfgs: List[dict],
                 balance: Optional[dict],
                 term_auto: Sequence[str] = ()) -> tuple:
    """``(lipschitz loss, feature loss, response losses, balancer, loss
    configs)`` of the distiller's arguments: the balancer weights every
    term that sets no ``loss_weight`` (:func:`auto_weight`; the response
    losses as one term, ``loss_kd``). Completes ``response_cfgs[i]['loss']``
    in place.
    A loss config without ``type`` is one of the default loss
    (:func:`with_default_type`)."""
    lipschitz_loss = with_default_type(lipschitz_loss, 'lipschitz_loss')
    feature_loss = with_default_type(feature_loss, 'feature_loss')
    lipschitz_loss, lip_auto = auto_weight(lipschitz_loss, 'lipschitz_loss')
    feature_loss, feat_auto = auto_weight(feature_loss, 'feature_loss')
    response_auto = []
    for r in response_cfgs:
        r['loss'], is_auto = auto_weight(r['loss'], 'response loss')
        response_auto.append(is_auto)
    if any(response_auto) and not all(response_auto):
        raise ValueError(
            'response losses: give every one a loss_weight or none (the '
            'balancer weights their sum, loss_kd, as one term)')
    auto = [name for name, is_auto in (
        ('loss_lipschitz', lip_auto), ('loss_feat', feat_auto),
        ('loss_kd', bool(response_auto) and all(response_auto))) if is_auto]
    auto += list(term_auto)
    lip = MODELS.build(lipschitz_loss) if lipschitz_loss else None
    feat = MODELS.build(feature_loss) if feature_loss else None
    response = nn.ModuleList(MODELS.build(r['loss']) for r in response_cfgs)
    if balance is None and auto:
        raise ValueError(
            f'balance=None, but {auto} set no loss_weight: give them '
            'explicit weights or keep the balancer')
    if balance is not None:
        check_balance_keys(balance)
    balancer = None if balance is None else LossBalancer(auto, **balance)
    cfgs = dict(lipschitz_loss=lipschitz_loss, feature_loss=feature_loss,
                response=[r.get('loss') for r in response_cfgs])
    return lip, feat, response, balancer, cfgs
