"""Command-line helpers of tools/train.py and tools/test.py (also used by
the demo): the shared arguments and the config adjustments."""
import argparse
import contextlib
import errno
import os
import os.path as osp
import re
from typing import List, Optional, Tuple

from mmengine.config import Config, DictAction

__all__ = [
    'is_distill_cfg', 'prepare_distill_cfg', 'student_test_cfg',
    'parse_with_launcher_args', 'load_tool_cfg', 'use_safe_checkpoints',
    'resolve_resume', 'own_work_dir', 'move_previous_run_aside',
    'check_work_dir_path'
]


def parse_with_launcher_args(parser: argparse.ArgumentParser,
                             argv: Optional[List[str]] = None):
    """Add the arguments every OpenMMLab tool shares (``--work-dir``,
    ``--cfg-options``, ``--launcher``, ``--local_rank``), parse, and export
    ``LOCAL_RANK`` as mmdet's tools do."""
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings in the config, key=value (see mmdet)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``; a missing file, or a config that is not
    valid Python, is a one-line error naming the file (and the line:
    mmengine parses the top file as ``<unknown>`` and passes the
    ``SyntaxError`` on as a traceback)."""
    if not osp.isfile(path):
        near = osp.dirname(path) or '.'
        hint = ''
        if osp.isdir(near):
            import difflib
            close = difflib.get_close_matches(
                osp.basename(path), os.listdir(near), n=3)
            hint = f' Close names in {near}: {close}.' if close else ''
        raise SystemExit(
            f'error: config file not found: {path!r} (from {os.getcwd()}).'
            + hint)
    if path.endswith('.py'):
        with open(path, encoding='utf-8') as f:
            source = f.read()
        try:
            compile(source, path, 'exec')
        except SyntaxError as e:
            line = (e.text or '').strip()
            raise SystemExit(
                f'error: the config {path!r} is not valid Python: {e.msg} '
                f'(line {e.lineno}' + (f': {line}' if line else '') +
                '). Fix that line (a bracket or quote left open, a missing '
                'comma) and run again.') from None
    try:
        return Config.fromfile(path)
    except SyntaxError as e:  # in a _base_ file: mmengine names it
        raise SystemExit(f'error: {e}') from None


def load_tool_cfg(args) -> Config:
    """The config of ``args.config`` with ``--launcher``, ``--cfg-options``
    and ``--work-dir`` (default ``work_dirs/<config name>``) applied.

    ``args.config`` is a file, or a config shipped with an installed
    package, ``mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py`` /
    ``mmseg::deeplabv3plus/...`` (read from its ``.mim/configs``; the work
    dir is then ``work_dirs/retinanet_r50_fpn_1x_voc0712``)."""
    path = args.config
    if '::' in path:  # a package config; a local path is read_config's
        from mmlckd.utils.config import resolve_config_path
        path = resolve_config_path(path)  # names close matches
    cfg = read_config(path)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg

_DISTILLERS = ('LipschitzDistiller', 'mmlckd.LipschitzDistiller')


def is_distill_cfg(cfg: Config) -> bool:
    return cfg.get('model', {}).get('type', None) in _DISTILLERS


#: hooks every distillation run of tools/train.py gets unless its config
#: has them: the start line, short train lines, the shares only when
#: measured and ``lipschitz.jsonl`` (``LipschitzMonitorHook``; its
#: ``out_file=None`` keeps all but the file), the exported student
DEFAULT_DISTILL_HOOKS = ('LipschitzMonitorHook', 'StudentExportHook')


def prepare_distill_cfg(cfg: Config) -> None:
    """For distillation configs: add the hooks of
    :data:`DEFAULT_DISTILL_HOOKS` the config does not have, so a config
    that only says ``model = dict(type='mmlckd.LipschitzDistiller', ...)``
    logs as documented and exports the student at the end of training; and
    add the images without labels of ``unlabelled_images = dict(...)``
    (:func:`mmlckd.datasets.add_unlabelled_images`; an error for a config
    that does not distil)."""
    from mmlckd.datasets import add_unlabelled_images
    add_unlabelled_images(cfg)
    if not is_distill_cfg(cfg):
        return
    hooks = list(cfg.get('custom_hooks', None) or [])
    for name in DEFAULT_DISTILL_HOOKS:
        if not any(str(h.get('type', '')).split('.')[-1] == name
                   for h in hooks):
            hooks.append(dict(type=f'mmlckd.{name}'))
    cfg.custom_hooks = hooks


_STOCK_CKPT_HOOKS = ('CheckpointHook', 'mmengine.CheckpointHook')


def use_safe_checkpoints(cfg: Config) -> bool:
    """Make the stock ``CheckpointHook`` of any config (a project recipe or
    a stock mmdet/mmseg one) a ``mmlckd.SafeCheckpointHook`` (same
    arguments): atomic writes, SHA-256 sidecars, old checkpoints deleted
    only after the new one is complete. Returns True if it changed."""
    hooks = cfg.get('default_hooks', None)
    ckpt = hooks.get('checkpoint', None) if hooks else None
    if not isinstance(ckpt, dict) or ckpt.get('type') not in \
            _STOCK_CKPT_HOOKS:
        return False
    ckpt['type'] = 'mmlckd.SafeCheckpointHook'
    return True


def resolve_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` (``'auto'`` or a path) into ``cfg.resume/load_from``.

    Raises SystemExit, naming the work dir or the path, when there is
    nothing to resume: mmengine would log "resumed from None" and train
    from scratch."""
    if resume is None:
        return
    if resume == 'auto':
        from mmengine.runner.checkpoint import find_latest_checkpoint
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
        from mmengine.runner.checkpoint import find_latest_checkpoint
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


def check_train_length(cfg: Config) -> None:
    """``train_cfg.max_iters`` / ``max_epochs`` of 0 (or less) is an error:
    mmengine trains nothing and ends with status 0, and a distillation run
    then exports its untrained student as ``student_final.pth``."""
    train_cfg = cfg.get('train_cfg', None) or {}
    for key in ('max_iters', 'max_epochs'):
        n = train_cfg.get(key, None)
        if isinstance(n, (int, float)) and n <= 0:
            raise SystemExit(
                f'error: train_cfg.{key}={n}: the run would train nothing '
                '(and a distillation run would export its untrained student '
                'as student_final.pth). Set train_cfg.' + key + ' to a '
                'positive number, e.g. --cfg-options train_cfg.' + key +
                '=12.')


def check_relative_paths(cfg: Config, config_path: str) -> None:
    """A relative ``teacher.checkpoint``, ``teacher.config`` or
    ``load_from`` is read from the current folder; one that is missing
    there but present next to the config (the tool run from another
    folder) is an error naming both places."""
    paths = [('load_from', cfg.get('load_from', None))]
    if is_distill_cfg(cfg):
        teacher = cfg.model.get('teacher', None) or {}
        paths += [(f'model.teacher.{k}', teacher.get(k, None))
                  for k in ('checkpoint', 'config')]
    here = osp.dirname(osp.abspath(config_path))
    for key, path in paths:
        if not isinstance(path, str) or not path or osp.isabs(path) or \
                '::' in path or '://' in path or osp.exists(path):
            continue
        beside = osp.join(here, path)
        if osp.exists(beside):
            raise SystemExit(
                f'error: {key}={path!r} is a relative path, read from the '
                f'current folder {os.getcwd()}, where it does not exist; '
                f'the config\'s folder has it: {beside}. Give the absolute '
                f'path (--cfg-options {key}={beside}) or run from the '
                'folder the path is relative to.')


def _existing_latest(work_dir: str, latest: str) -> str:
    """The checkpoint ``last_checkpoint`` names, when it exists; the file of
    that name in ``work_dir`` when the work dir was moved (it holds an
    absolute path); else an error naming ``last_checkpoint`` and the
    checkpoints that do exist."""
    if osp.isfile(latest):
        return latest
    here = osp.join(work_dir, osp.basename(latest))
    if osp.isfile(here):
        from mmengine.logging import print_log
        print_log(f'--resume: last_checkpoint names {latest}, which does '
                  f'not exist (the work dir was moved?); resuming from '
                  f'{here}, the file of that name in this work dir.',
                  logger='current')
        return here
    from mmlckd.checkpoint.load import checkpoints_in
    found = checkpoints_in(work_dir)
    raise SystemExit(
        f'--resume: {osp.join(work_dir, "last_checkpoint")} names {latest}, '
        'which does not exist (deleted or moved). ' +
        (f'Checkpoints in the work dir: {", ".join(found[-3:])}; resume '
         f'from one explicitly: --resume {osp.join(work_dir, found[-1])}'
         if found else 'There is no other checkpoint in the work dir; '
         'drop --resume to start afresh') + '.')


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


# ------------------------------------------------------- work dir ownership
LOCK_NAME = '.mmlckd_run.lock'
ARCHIVE_DIR = 'previous_runs'
_RUN_FILES = re.compile(
    r'(.*\.pth|.*\.pth\.sha256|last_checkpoint|.*\.jsonl|.*\.py|'
    r'\d{8}_\d{6})$')


def check_work_dir_path(work_dir: str) -> None:
    """A work dir that exists as a file (not a folder), or a symlink to
    nothing, is an error."""
    if osp.islink(work_dir) and not osp.exists(work_dir):
        raise SystemExit(
            f'error: the work dir {work_dir!r} is a symlink to '
            f'{os.readlink(work_dir)!r}, which does not exist (a disk not '
            'mounted, or a folder moved?). Create or mount that folder, '
            'or pass another --work-dir.')
    if osp.exists(work_dir) and not osp.isdir(work_dir):
        raise SystemExit(
            f'error: the work dir {work_dir!r} is a file, not a folder. '
            'Pass another --work-dir (or set work_dir in the config), or '
            'move that file away.')


def _is_main_rank() -> bool:
    return int(os.environ.get('RANK', '0') or 0) == 0


def _lock_owner(path: str) -> str:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            info = dict(line.rstrip('\n').split('=', 1) for line in f
                        if '=' in line)
    except OSError:
        info = {}
    return (f'pid {info.get("pid", "?")} on host {info.get("host", "?")}, '
            f'started {info.get("started", "?")}: '
            f'{info.get("command", "?")}')


def _previous_run_entries(work_dir: str) -> List[str]:
    """The outputs a run leaves in its work dir (checkpoints and their
    sidecars, last_checkpoint, the dumped config, histories, log
    folders). Anything else in the folder is not touched."""
    names = []
    for name in sorted(os.listdir(work_dir)):
        if name in (LOCK_NAME, ARCHIVE_DIR) or name.startswith('.'):
            continue
        path = osp.join(work_dir, name)
        is_log_dir = osp.isdir(path) and re.fullmatch(r'\d{8}_\d{6}', name)
        if is_log_dir or (osp.isfile(path) and _RUN_FILES.fullmatch(name)):
            names.append(name)
    return names


def _file_refs(cfg) -> List[Tuple[str, str]]:
    """(setting, path) of the files a config reads at start: load_from and
    a distiller's teacher.checkpoint."""
    refs = []
    if cfg is None:
        return refs
    if isinstance(cfg.get('load_from', None), str):
        refs.append(('load_from', cfg.load_from))
    teacher = (cfg.get('model', None) or {}).get('teacher', None)
    if isinstance(teacher, dict) and isinstance(
            teacher.get('checkpoint', None), str):
        refs.append(('model.teacher.checkpoint', teacher['checkpoint']))
    return refs


def move_previous_run_aside(work_dir: str, cfg: Optional[Config] = None,
                            config_path: Optional[str] = None
                            ) -> Optional[str]:
    """A fresh run in a work dir that holds an earlier run's checkpoints:
    move that run's checkpoints, config and history together into
    ``<work_dir>/previous_runs/<YYYYmmdd_HHMMSS>/`` (the time the earlier
    run last wrote), so nothing is overwritten and the kept history still
    describes the kept checkpoints. Returns the message, or None when the
    folder held no earlier run (no checkpoint, no last_checkpoint, no
    history).

    A file this run reads is followed: ``load_from`` or
    ``model.teacher.checkpoint`` of ``cfg`` naming a moved file is set to
    its new path; the config file being run (``config_path``) is copied,
    not moved."""
    import shutil
    import time
    if not osp.isdir(work_dir):
        return None
    names = _previous_run_entries(work_dir)
    if not any(n.endswith(('.pth', '.jsonl')) or n == 'last_checkpoint'
               for n in names):
        return None
    newest = max(osp.getmtime(osp.join(work_dir, n)) for n in names)
    stamp = time.strftime('%Y%m%d_%H%M%S', time.localtime(newest))
    dest, n = osp.join(work_dir, ARCHIVE_DIR, stamp), 1
    while osp.exists(dest):
        dest, n = osp.join(work_dir, ARCHIVE_DIR, f'{stamp}_{n}'), n + 1
    os.makedirs(dest)
    running = osp.abspath(config_path) if config_path else None
    for name in names:
        src = osp.join(work_dir, name)
        if src == running:
            shutil.copy2(src, osp.join(dest, name))
        else:
            os.replace(src, osp.join(dest, name))
    followed = []
    for key, path in _file_refs(cfg):
        if osp.dirname(osp.abspath(path)) == work_dir and \
                osp.basename(path) in names:
            new = osp.join(dest, osp.basename(path))
            if key == 'load_from':
                cfg.load_from = new
            else:
                cfg.model.teacher.checkpoint = new
            followed.append(f'{key} now reads {new}')
    ckpts = [n for n in names if n.endswith('.pth')]
    resumable = [n for n in ckpts if re.fullmatch(r'(iter|epoch)_\d+\.pth', n)]
    latest = _named_in_last_checkpoint(dest) or (
        max(resumable, key=lambda n: osp.getmtime(osp.join(dest, n)))
        if resumable else None)
    return (f'the work dir {work_dir} held an earlier run (' +
            (f'{len(ckpts)} checkpoints' if ckpts else 'its history') +
            '); this is a fresh run (no --resume), so that run\'s '
            f'checkpoints, config and history were moved together to {dest} '
            '(nothing was overwritten)' +
            (f'; {", ".join(followed)}' if followed else '') + '.' +
            (f' To continue that run instead: --resume '
             f'{osp.join(dest, latest)}' if latest else ''))


def _named_in_last_checkpoint(folder: str) -> Optional[str]:
    try:
        with open(osp.join(folder, 'last_checkpoint')) as f:
            name = osp.basename(f.read().strip())
    except OSError:
        return None
    return name if name and osp.isfile(osp.join(folder, name)) else None


@contextlib.contextmanager
def own_work_dir(cfg: Config, resume: bool,
                 config_path: Optional[str] = None):
    """Hold ``<work_dir>/.mmlckd_run.lock`` (``fcntl.flock``) for the whole
    run: a second run in the same work dir (fresh or ``--resume``) stops
    with the first run's pid and host instead of interleaving checkpoints
    and history. A fresh run then moves an earlier run's outputs aside
    (:func:`move_previous_run_aside`). Yields the notes to log (the
    runner's logger does not exist yet). Only rank 0 locks and moves."""
    import fcntl
    import socket
    import sys
    import time
    work_dir = osp.abspath(cfg.work_dir)
    check_work_dir_path(work_dir)
    notes: List[str] = []
    if not _is_main_rank():
        yield notes
        return
    path = osp.join(work_dir, LOCK_NAME)
    try:
        os.makedirs(work_dir, exist_ok=True)
        f = open(path, 'a+', encoding='utf-8')
    except OSError as e:  # read-only disk, no permission
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise SystemExit(
            f'error: cannot write in the work dir {work_dir} ({e.strerror}'
            f': {e.filename}): checkpoints and logs go there. Pass a '
            '--work-dir on a writable disk (or fix its permissions); '
            'nothing was written.') from None
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SystemExit(
                f'error: the work dir {work_dir} is in use by another run '
                f'({_lock_owner(path)}). Two runs in one work dir overwrite '
                "each other's checkpoints and history. Wait for that run to "
                'end (or stop it), or pass another --work-dir.') from None
        f.seek(0)
        f.truncate()
        f.write(f'pid={os.getpid()}\nhost={socket.gethostname()}\n'
                f'started={time.strftime("%Y-%m-%d %H:%M:%S")}\n'
                f'command={" ".join(sys.argv)}\n')
        f.flush()
        if not resume:
            note = move_previous_run_aside(work_dir, cfg, config_path)
            if note:
                notes.append(note)
        yield notes
    finally:
        f.close()  # releases the lock


# ------------------------------------------------------------ tools/train.py
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
    if not getattr(runner, '_resume', False) or not args.cfg_options:
        return None
    overrides = {k: v for k, v in args.cfg_options.items()
                 if re.search(r'(^|\.)lr$', k)}
    path = getattr(runner, '_load_from', None)
    if not overrides or not path or not osp.isfile(path):
        return None
    from mmlckd.checkpoint import safe_torch_load
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


def check_finished(runner) -> None:
    """A run that ends with weights it could not save (NaN/Inf: checkpoints
    refused by ``SafeCheckpointHook``, the student not exported) exits
    non-zero, naming the last finite checkpoint."""
    from mmlckd.engine.hooks.safe_checkpoint_hook import (SafeCheckpointHook,
                                                          non_finite_tensors)
    from mmlckd.engine.hooks.utils import unwrap_model
    hooks = [h for h in runner.hooks if isinstance(h, SafeCheckpointHook)]
    refused = next((h.non_finite_at for h in hooks
                    if getattr(h, 'non_finite_at', None)), None)
    bad = non_finite_tensors(unwrap_model(runner).state_dict())
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


# ------------------------------------------------ distillation setup checks
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
    from mmlckd.engine.hooks.utils import unwrap_model
    model = unwrap_model(runner)
    try:  # builds the train loop and its dataset
        max_iters = runner.max_iters
        data_warnings = unknown_class_annotations(
            runner.train_dataloader.dataset)
    except Exception as e:  # an unusual loop: runner.train() says what fails
        if 'need at least one array to concatenate' in str(e):
            runner.logger.error(_empty_after_filter(runner.cfg))
            raise SystemExit('error: ' + _empty_after_filter(runner.cfg)) \
                from None
        max_iters, data_warnings = None, []
    for w in data_warnings:
        runner.logger.warning(w)
    if getattr(model, 'student_recorder', None) is None:
        return data_warnings
    errors, warnings = distill_setup_problems(model, max_iters)
    balancer = getattr(model, 'balancer', None)
    if balancer is not None and getattr(balancer, 'terms', None):
        runner.register_hook(_calibration_hook(balancer.iters))
    for w in warnings:
        runner.logger.warning(w)
    for e in errors:
        runner.logger.error(e)
    if errors:
        raise SystemExit('error: ' + '\nerror: '.join(errors))
    return data_warnings + warnings


# ------------------------------------------------------------- data checks
def _empty_after_filter(cfg) -> str:
    """The message for a training set that its dataset's filter emptied
    (mmengine: "need at least one array to concatenate")."""
    data = next((d for d in _dataset_cfgs(
        (cfg.get('train_dataloader', None) or {}).get('dataset', None))
        if 'ann_file' in d), {})
    return (f'the training set is empty: every image listed in '
            f'{data.get("ann_file", "its ann_file")!r} (data_root '
            f'{data.get("data_root", "")!r}) was dropped by the dataset\'s '
            f'filter (filter_cfg={data.get("filter_cfg", None)}): mmdet '
            'drops the images without a box of the dataset\'s classes. '
            'Check the class names in the annotations against the '
            'dataset\'s classes (metainfo), or set '
            'filter_cfg.filter_empty_gt=False to keep images without boxes.')


def _dataset_cfgs(cfg) -> list:
    """The dataset configs of ``cfg`` (a dataset config), wrappers
    (``dataset=``/``datasets=``) opened."""
    if not isinstance(cfg, dict):
        return []
    out = [cfg]
    if isinstance(cfg.get('dataset', None), dict):
        out += _dataset_cfgs(cfg['dataset'])
    for d in cfg.get('datasets', None) or []:
        out += _dataset_cfgs(d)
    return out


def check_empty_ann_files(cfg: Config) -> None:
    """An image-set list (``ann_file`` ``*.txt``) with no image id is an
    error naming the file (mmengine fails later with "need at least one
    array to concatenate")."""
    loader = cfg.get('train_dataloader', None) or {}
    for d in _dataset_cfgs(loader.get('dataset', None)):
        ann = d.get('ann_file', None)
        if not isinstance(ann, str) or not ann.endswith('.txt'):
            continue
        root = d.get('data_root', None) or ''
        path = ann if osp.isabs(ann) or not root else osp.join(root, ann)
        if not osp.isfile(path):
            continue
        with open(path, encoding='utf-8', errors='replace') as f:
            empty = not any(line.strip() for line in f)
        if empty:
            raise SystemExit(
                f'error: the image-set file {path!r} (train_dataloader '
                'ann_file) lists no image: it is empty. Fill it with one '
                'image id per line (the names of the Annotations/*.xml '
                'files without .xml), or point ann_file at another list.')


def _xml_datasets(dataset) -> list:
    try:
        from mmdet.datasets import XMLDataset
    except ImportError:  # no mmdet
        return []
    if isinstance(dataset, XMLDataset):
        return [dataset]
    out = []
    inner = getattr(dataset, 'dataset', None)
    if inner is not None:
        out += _xml_datasets(inner)
    for d in getattr(dataset, 'datasets', None) or []:
        out += _xml_datasets(d)
    return out


def unknown_class_annotations(dataset) -> List[str]:
    """One message per VOC-style (XML) dataset in ``dataset`` whose
    annotations name classes that are not the dataset's: mmdet drops those
    boxes, and the images left without a box, without a word."""
    import collections
    import difflib
    import xml.etree.ElementTree as ET
    from mmengine.fileio import list_from_file
    msgs = []
    for ds in _xml_datasets(dataset):
        classes = list(ds.metainfo.get('classes', None) or [])
        if not classes:
            continue
        names = collections.Counter()
        boxes, images, emptied, example = 0, 0, 0, None
        for img_id in list_from_file(ds.ann_file):
            xml = osp.join(ds.sub_data_root, ds.ann_subdir, f'{img_id}.xml')
            try:
                objs = ET.parse(xml).getroot().findall('object')
            except (OSError, ET.ParseError):
                continue
            images += 1
            found = [o.findtext('name', '') for o in objs]
            boxes += len(found)
            bad = [n for n in found if n not in classes]
            if bad:
                names.update(bad)
                example = example or xml
                emptied += len(bad) == len(found)
        if not names:
            continue
        hints = []
        for n in names:
            close = difflib.get_close_matches(
                n.replace(' ', ''), classes, n=1, cutoff=0.6)
            if close:
                hints.append(f'{n!r} -> {close[0]!r}?')
        n_bad = sum(names.values())
        msgs.append(
            f'the annotations of {ds.ann_file} hold {n_bad} boxes of '
            f'classes that are not among the dataset\'s {len(classes)} '
            f'classes: {dict(names)} (e.g. in {example}); mmdet drops them '
            f'({images} images / {boxes} boxes read, {n_bad} boxes dropped, '
            f'{emptied} images left without a box, dropped with '
            'filter_empty_gt). Fix the names in the XML files' +
            (f' ({", ".join(hints)})' if hints else '') +
            ", or add the classes to the dataset's metainfo.")
    return msgs


class CalibrationPositivesHook:
    """Counts the ground-truth boxes of the batches the loss balancer
    measures (calibration steps ``iters // 2 .. iters - 1``) and warns,
    once, when none of them holds a box: the weights are then scaled
    against a background-only task loss (up to 100x off)."""

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
        if not self.iters // 2 <= step < self.iters:
            return None
        n = self.count_boxes(data_batch)
        if n is None:
            return None
        self.boxes.append(n)
        if step != self.iters - 1 or any(self.boxes):
            return None
        return (f'loss balance: the {len(self.boxes)} batches the '
                f'calibration measured (iterations {self.iters // 2 + 1}-'
                f'{self.iters}) hold no ground-truth box, so the automatic '
                'weights are scaled against a background-only task loss '
                '(they can be 100x off). Set filter_cfg.filter_empty_gt='
                'True on the training set, a longer balance.iters, or '
                'explicit loss_weight values.')


def _calibration_hook(iters: int):
    from mmengine.hooks import Hook

    class _Hook(Hook):
        priority = 'LOW'

        def __init__(self):
            self.check = CalibrationPositivesHook(iters)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            msg = self.check.record(runner.iter, data_batch)
            if msg:
                runner.logger.warning(msg)

    return _Hook()
