"""``--resume``: what to resume from, and what a resume does not change."""
import os.path as osp
import re
from typing import List, Optional

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner.checkpoint import find_latest_checkpoint

from mmlckd.checkpoint import safe_torch_load
from mmlckd.checkpoint.load import checkpoints_in
from .work_dir import check_work_dir_path

__all__ = ['resolve_resume', 'warn_resume_lr_override']


def resolve_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` (``'auto'`` or a path) into ``cfg.resume/load_from``.

    Raises SystemExit, naming the work dir or the path, when there is
    nothing to resume: mmengine would log "resumed from None" and train
    from scratch."""
    if resume is None:
        return
    if resume == 'auto':
        work_dir = osp.abspath(cfg.work_dir)
        check_work_dir_path(work_dir)
        latest = find_latest_checkpoint(work_dir) if osp.isdir(
            work_dir) else None
        if latest is None:
            raise SystemExit(
                f'--resume: nothing to resume in the work dir {work_dir!r} '
                '(no "last_checkpoint" file; ' +
                ('the folder does not exist' if not osp.isdir(work_dir)
                 else 'no checkpoint was completed there') +
                '). Check --work-dir, pass the checkpoint explicitly '
                '(--resume PATH), or drop --resume to start afresh.')
        latest = _existing_latest(work_dir, latest)
        cfg.resume = True
        cfg.load_from = latest
        return
    if osp.isdir(resume):
        latest = find_latest_checkpoint(resume)
        raise SystemExit(
            f'--resume: {resume!r} is a folder, not a checkpoint. ' +
            (f'Its latest checkpoint is {latest}: pass --resume {latest}, '
             f'or continue that run in its own work dir with --work-dir '
             f'{resume} --resume (no value).' if latest and
             osp.isfile(latest) else 'It holds no last_checkpoint; pass '
             'the checkpoint file (--resume <folder>/iter_N.pth).'))
    if not osp.isfile(resume):
        raise SystemExit(f'--resume: checkpoint not found: {resume!r}')
    cfg.resume = True
    cfg.load_from = resume


def _existing_latest(work_dir: str, latest: str) -> str:
    """The checkpoint ``last_checkpoint`` names, when it exists; the file of
    that name in ``work_dir`` when the work dir was moved (it holds an
    absolute path); else an error naming ``last_checkpoint`` and the
    checkpoints that do exist."""
    if osp.isfile(latest):
        return latest
    here = osp.join(work_dir, osp.basename(latest))
    if osp.isfile(here):
        print_log(f'--resume: last_checkpoint names {latest}, which does '
                  f'not exist (the work dir was moved?); resuming from '
                  f'{here}, the file of that name in this work dir.',
                  logger='current')
        return here
    found = checkpoints_in(work_dir)
    raise SystemExit(
        f'--resume: {osp.join(work_dir, "last_checkpoint")} names {latest}, '
        'which does not exist (deleted or moved). ' +
        (f'Checkpoints in the work dir: {", ".join(found[-3:])}; resume '
         f'from one explicitly: --resume {osp.join(work_dir, found[-1])}'
         if found else 'There is no other checkpoint in the work dir; '
         'drop --resume to start afresh') + '.')


def _checkpoint_lrs(ckpt) -> List[float]:
    opt = ckpt.get('optimizer', None) if isinstance(ckpt, dict) else None
    if not isinstance(opt, dict):
        return []
    states = [opt] if 'param_groups' in opt else [
        v for v in opt.values() if isinstance(v, dict)]
    return [g['lr'] for st in states for g in st.get('param_groups', [])
            if isinstance(g, dict) and 'lr' in g]


def warn_resume_lr_override(runner, args) -> Optional[str]:
    """``--resume`` restores the optimizer state of the checkpoint, its lr
    included: an lr given in ``--cfg-options`` is then not used. Logs a
    warning saying so and how to train on with the new lr (``load_from``,
    no ``--resume``). Returns the warning, or None."""
    if not runner.cfg.get('resume', False) or not args.cfg_options:
        return None
    overrides = {k: v for k, v in args.cfg_options.items()
                 if re.search(r'(^|\.)lr$', k)}
    path = runner.cfg.get('load_from', None)
    if not overrides or not path or not osp.isfile(path):
        return None
    try:
        lrs = _checkpoint_lrs(safe_torch_load(path, role='resume checkpoint'))
    except Exception:  # the checkpoint check reports a bad file
        return None

    def differs(v) -> bool:
        try:
            return any(float(v) != lr for lr in lrs)
        except (TypeError, ValueError):  # not a number: not compared
            return False

    differ = {k: v for k, v in overrides.items() if lrs and differs(v)}
    if not differ:
        return None
    key, value = next(iter(differ.items()))
    msg = (f'--resume restores the optimizer state of {path}, including its '
           f'lr ({lrs[0]:g}): the override {key}={value} is NOT used (the '
           "checkpoint's lr wins). To train on from those weights with "
           f'lr {value}, start a new run without --resume: --cfg-options '
           f'load_from={path} {key}={value} (the iteration count starts '
           'again from 0).')
    runner.logger.warning(msg)
    return msg
