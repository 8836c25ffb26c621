"""Faults a user or an operator hits (issue 11): each ends in a clear message
or correct behaviour, and no checkpoint, history or result is lost.

The table in docs/reliability.md lists every case with its test here.
Toy runs (tests/fault_toys.py) go through the real tools and mmengine's
Runner; model-level cases use the tiny detectors of mmlckd/testing/models.py.
"""
import errno
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

import pytest
import torch
from mmengine.config import Config

import mmlckd  # noqa: F401
from mmlckd.checkpoint import safe_torch_load
from mmlckd.checkpoint import (CheckpointError, atomic_torch_save,
                                         sha256_file, verify_checksum)
from tool_modules import REPO, TESTS, load_tool

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def _dump(cfg: dict, path) -> str:
    Config(cfg).dump(str(path))
    return str(path)


def _run_tool(args, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep +
               os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    env.update(env_extra or {})
    return subprocess.run([sys.executable] + args, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _unsafe_hint(text: str) -> bool:
    return 'weights_only=False' in text or 'weights_only` set to `False' \
        in text


# --------------------------------------------------------------- data loss
@pytest.mark.slow
def test_kill9_while_writing_checkpoint_then_resume(tmp_path):
    """kill -9 in the middle of writing iter_2.pth with max_keep_ckpts=1 (the
    demo's value): iter_1.pth and a last_checkpoint naming it survive, and
    --resume continues to the same weights as an uninterrupted run."""
    from fault_toys import toy_cfg
    work = tmp_path / 'work'
    cfg = _dump(toy_cfg(work, max_iters=3), tmp_path / 'toy.py')
    killed = _run_tool(['tools/train.py', cfg],
                       env_extra=dict(MMLCKD_TEST_KILL_AT_SAVE='2'))
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr
    assert 'KILLED while writing' in killed.stdout
    # the previous checkpoint is intact and is what last_checkpoint names
    last = (work / 'last_checkpoint').read_text().strip()
    assert osp.basename(last) == 'iter_1.pth'
    assert osp.getsize(last) > 0
    assert safe_torch_load(last)['meta']['iter'] == 1
    assert verify_checksum(last) is True
    assert not (work / 'iter_2.pth').exists()

    assert (work / '.iter_2.pth.tmp').exists()  # the interrupted write

    resumed = _run_tool(['tools/train.py', cfg, '--resume'])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert 'removed .iter_2.pth.tmp' in resumed.stdout + resumed.stderr
    assert not list(work.glob('.*.tmp'))
    assert 'Load checkpoint from' in resumed.stdout + resumed.stderr
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_3.pth']
    assert verify_checksum(str(work / 'iter_3.pth')) is True

    straight = tmp_path / 'straight'
    cfg2 = _dump(toy_cfg(straight, max_iters=3), tmp_path / 'toy2.py')
    ok = _run_tool(['tools/train.py', cfg2])
    assert ok.returncode == 0, ok.stderr[-3000:]
    got = safe_torch_load(str(work / 'iter_3.pth'))['state_dict']
    want = safe_torch_load(str(straight / 'iter_3.pth'))['state_dict']
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _train_in_process(cfg: dict, tmp_path, *extra, name='cfg.py'):
    train = load_tool('train')
    return train.main([_dump(cfg, tmp_path / name)] + list(extra))


@pytest.mark.slow
def test_old_checkpoints_deleted_only_after_new_one_complete(tmp_path):
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    runner = _train_in_process(toy_cfg(work, max_iters=3), tmp_path)
    assert 'SafeCheckpointHook' in [type(h).__name__ for h in runner.hooks]
    from mmlckd.cli.work_dir import LOCK_NAME  # the run's work dir lock
    names = sorted(p.name for p in work.iterdir()
                   if p.is_file() and p.suffix != '.py'
                   and p.name != LOCK_NAME)
    assert names == ['iter_3.pth', 'iter_3.pth.sha256', 'last_checkpoint']
    line = (work / 'iter_3.pth.sha256').read_text().split()
    assert line == [sha256_file(str(work / 'iter_3.pth')), 'iter_3.pth']


def test_project_configs_use_the_safe_checkpoint_hook():
    from mmlckd.cli.train_cfg import use_safe_checkpoints
    from mmengine.registry import HOOKS
    for folder in ('configs/baselines', 'configs/london'):
        for name in sorted(os.listdir(osp.join(REPO, folder))):
            if not name.endswith('.py'):
                continue
            cfg = Config.fromfile(osp.join(REPO, folder, name))
            assert cfg.default_hooks.checkpoint.type == \
                'mmlckd.SafeCheckpointHook', name
            # the mmlckd. prefix finds the hook from any scope (how a fresh
            # process imports mmlckd for it: tests/test_packaging.py)
            hook = HOOKS.get(cfg.default_hooks.checkpoint.type)
            assert hook.__name__ == 'SafeCheckpointHook', name
            assert hook.__module__.startswith('mmlckd.'), name
    for name in ('synvoc_det_runtime.py', 'synvoc_seg_runtime.py'):
        cfg = Config.fromfile(osp.join(REPO, 'configs/demo', name))
        assert cfg.default_hooks.checkpoint.type == \
            'mmlckd.SafeCheckpointHook'
    # tools upgrade stock configs too
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(
        type='CheckpointHook', interval=3))))
    assert use_safe_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint == dict(
        type='mmlckd.SafeCheckpointHook', interval=3)
    src = open(osp.join(REPO, 'demo/runner.py')).read()
    assert "type='CheckpointHook'" not in src


@pytest.mark.slow
def test_fresh_run_in_used_work_dir_moves_previous_run_aside(tmp_path):
    """Issue 20, case 1: a fresh run (no --resume) in a work dir where a
    finished run left checkpoints, config and lipschitz.jsonl moves them,
    together and unchanged, into previous_runs/<time>/ (the new run used
    to overwrite iter_N.pth and student_final.pth, and only the history was
    kept)."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'

    def cfg(iters):
        c = toy_cfg(work, max_iters=iters, max_keep_ckpts=3)
        c['model']['type'] = 'FaultToyDistiller'
        c['custom_hooks'] = [dict(type='mmlckd.LipschitzMonitorHook')]
        return c

    def iters(path):
        return [json.loads(line)['iter'] for line in open(path)]

    _train_in_process(cfg(2), tmp_path)
    assert iters(work / 'lipschitz.jsonl') == [1, 2]
    before = {p.name: sha256_file(str(p)) for p in work.glob('iter_*.pth')}
    assert sorted(before) == ['iter_1.pth', 'iter_2.pth']
    runner = _train_in_process(cfg(1), tmp_path, '--cfg-options',
                               'optim_wrapper.optimizer.lr=0.05',
                               name='again.py')  # fresh, same dir
    assert iters(work / 'lipschitz.jsonl') == [1]
    kept = list((work / 'previous_runs').iterdir())
    assert len(kept) == 1 and re.fullmatch(r'\d{8}_\d{6}', kept[0].name)
    old = kept[0]
    # the earlier run, complete and unchanged, in one folder
    assert {p.name: sha256_file(str(p))
            for p in old.glob('iter_*.pth')} == before
    assert (old / 'iter_2.pth.sha256').exists()
    assert iters(old / 'lipschitz.jsonl') == [1, 2]
    assert (old / 'cfg.py').exists() and (old / 'last_checkpoint').exists()
    assert not list(work.glob('lipschitz.*.jsonl'))
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert f'moved together to {old}' in log
    assert f'--resume {old}/iter_2.pth' in log
    # a resumed run keeps its own history (up to the resumed iteration)
    _train_in_process(cfg(2), tmp_path, '--resume', name='resume.py')
    assert iters(work / 'lipschitz.jsonl') == [1, 2]
    assert len(list((work / 'previous_runs').iterdir())) == 1


@pytest.mark.slow
def test_moving_a_run_aside_follows_the_files_the_new_run_reads(tmp_path):
    """The restart the NaN guard advises (a fresh run in the same work dir
    with load_from=<work_dir>/iter_N.pth), and a config run from the work
    dir itself: the moved checkpoint is loaded from its new place, and the
    config being run stays where it is (a copy goes with the old run)."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    work.mkdir()
    first = _dump(toy_cfg(work, max_iters=2, max_keep_ckpts=3),
                  work / 'exp.py')
    load_tool('train').main([first])
    want = safe_torch_load(str(work / 'iter_2.pth'))['state_dict']
    # in one process, a run of the same config in the same second would
    # share mmengine's cached visualizer (named by config and second)
    time.sleep(1.1)
    runner = load_tool('train').main(
        [first, '--cfg-options', f'load_from={work}/iter_2.pth',
         'optim_wrapper.optimizer.lr=0.0', 'train_cfg.max_iters=1'])
    old = next((work / 'previous_runs').iterdir())
    assert (old / 'iter_2.pth').is_file() and (old / 'exp.py').is_file()
    assert (work / 'exp.py').is_file()
    got = runner.model.state_dict()
    for k in want:  # lr 0: the moved checkpoint's weights were loaded
        assert torch.equal(got[k], want[k]), k
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert f'load_from now reads {old}/iter_2.pth' in log


def _hold_work_dir_lock(work, pid=4242, host='gpu-node-7'):
    import fcntl
    from mmlckd.cli.work_dir import LOCK_NAME
    work.mkdir(parents=True, exist_ok=True)
    f = open(work / LOCK_NAME, 'w')
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write(f'pid={pid}\nhost={host}\nstarted=2026-01-01 00:00:00\n'
            'command=tools/train.py cfg.py\n')
    f.flush()
    return f


@pytest.mark.parametrize('resume', [False, True])
def test_second_run_in_a_work_dir_in_use_is_refused(tmp_path, resume):
    """Issue 20, case 2: a second run (fresh or --resume) in a work dir a
    running run holds stops, naming that run's pid and host, and touches
    nothing there (both used to run, interleaving history and
    checkpoints)."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    work.mkdir()
    (work / 'iter_1.pth').write_bytes(b'x' * 10)
    (work / 'last_checkpoint').write_text(str(work / 'iter_1.pth'))
    lock = _hold_work_dir_lock(work)
    before = sorted(p.name for p in work.iterdir())
    try:
        with pytest.raises(SystemExit, match=r'in use by another run \(pid '
                           r'4242 on host gpu-node-7.*another --work-dir'):
            _train_in_process(toy_cfg(work), tmp_path,
                              *(['--resume'] if resume else []))
    finally:
        lock.close()
    assert sorted(p.name for p in work.iterdir()) == before


# ----------------------------------------------------- resume: clear errors
@pytest.mark.slow
def test_resume_with_nothing_to_resume_names_the_work_dir(tmp_path):
    from fault_toys import toy_cfg
    typo = tmp_path / 'wrok_dir'
    with pytest.raises(SystemExit, match='nothing to resume.*wrok_dir'):
        _train_in_process(toy_cfg(typo), tmp_path, '--resume')
    assert not (typo / 'iter_1.pth').exists()
    # the hook says so too when a Runner is built without the tool
    from mmengine.runner import Runner
    cfg = toy_cfg(typo, hook='mmlckd.SafeCheckpointHook')
    cfg.update(resume=True, load_from=None)
    with pytest.raises(FileNotFoundError, match='nothing to resume in the '
                       'work dir .*wrok_dir'):
        Runner.from_cfg(Config(cfg)).train()
    assert not (typo / 'iter_1.pth').exists()


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['empty', 'text', 'other_model',
                                  'corrupted'])
def test_resume_from_a_bad_checkpoint_is_a_clear_error(tmp_path, kind):
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    _train_in_process(toy_cfg(work, max_iters=1), tmp_path)
    ckpt = work / 'iter_1.pth'
    if kind == 'empty':
        ckpt.write_bytes(b'')
        (work / 'iter_1.pth.sha256').unlink()
        want = r'empty \(0 bytes\)'
    elif kind == 'text':
        ckpt.write_text('this is not a checkpoint\n')
        (work / 'iter_1.pth.sha256').unlink()
        want = 'text file'
    elif kind == 'corrupted':  # finite bytes changed, still loadable zip
        data = bytearray(ckpt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        ckpt.write_bytes(bytes(data))
        want = 'SHA-256'
    else:  # a checkpoint of a different model (width 16 instead of 8)
        other = tmp_path / 'o'
        _train_in_process(toy_cfg(other, max_iters=1, width=16), tmp_path,
                          name='o.py')
        ckpt = other / 'iter_1.pth'
        want = r'not written by this model.*size mismatch'
    with pytest.raises(SystemExit, match=want) as info:
        _train_in_process(toy_cfg(work, max_iters=2), tmp_path, '--resume',
                          str(ckpt), name='r.py')
    assert str(ckpt) in str(info.value)
    assert not _unsafe_hint(str(info.value))


@pytest.mark.slow
def test_load_from_a_text_file_is_a_clear_error(tmp_path):
    from fault_toys import toy_cfg
    notes = tmp_path / 'notes.pth'
    notes.write_text('epoch 12: mAP 0.71\n')
    with pytest.raises(SystemExit, match='load_from checkpoint .*notes.pth'
                       '.* is a text file') as e:
        _train_in_process(toy_cfg(tmp_path / 'w'), tmp_path,
                          '--cfg-options', f'load_from={notes}')
    assert not _unsafe_hint(str(e.value))


@pytest.mark.slow
def test_load_from_a_plain_student_checkpoint_loads_into_the_student(
        tmp_path):
    """Issue 20, case 3: load_from=<plain student checkpoint> on a
    distillation model matched 0 tensors (backbone.* vs student.backbone.*)
    and trained from random weights; now the keys are mapped onto
    student. with one log line."""
    from fault_toys import toy_cfg
    plain = tmp_path / 'plain'
    _train_in_process(toy_cfg(plain, max_iters=1), tmp_path, name='p.py')
    ckpt = plain / 'iter_1.pth'
    want = safe_torch_load(str(ckpt))['state_dict']
    cfg = toy_cfg(tmp_path / 'kd', max_iters=1, lr=0.0)
    cfg['model'] = dict(type='FaultToyKD')
    runner = _train_in_process(cfg, tmp_path, '--cfg-options',
                               f'load_from={ckpt}', name='kd.py')
    got = runner.model.student.state_dict()
    for k in want:  # lr 0: the weights are the checkpoint's
        assert torch.equal(got[k], want[k]), k
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'a plain student checkpoint (4 of the student\'s 4 tensors ' \
        'match); loading it into the student' in log


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['distillation_into_plain', 'prefix'])
def test_load_from_that_loads_nothing_is_an_error(tmp_path, kind):
    """Issue 20, case 3: a load_from of which no tensor matches the model
    (a distillation checkpoint into a plain config, a prefixed file) is an
    error naming the mismatch and the fix, before any training."""
    from fault_toys import toy_cfg
    import fault_toys  # noqa: F401
    from mmengine.registry import MODELS
    state = MODELS.build(dict(type='FaultToyModel')).state_dict()
    ckpt = tmp_path / f'{kind}.pth'
    if kind == 'distillation_into_plain':
        torch.save(dict(state_dict={f'student.{k}': v
                                    for k, v in state.items()}), ckpt)
        want = (r'is a distillation checkpoint .*none of its 4 tensors would '
                r'load.*export_student.py')
    else:
        torch.save(dict(state_dict={f'model.{k}': v
                                    for k, v in state.items()}), ckpt)
        want = (r"matches none of the model's 4 tensors.*prefix mismatch: "
                r'the file has "model.fc1.weight" where the model has '
                r'"fc1.weight" \(extra prefix "model." in the file\)')
    work = tmp_path / 'w'
    with pytest.raises(SystemExit, match=want):
        _train_in_process(toy_cfg(work), tmp_path, '--cfg-options',
                          f'load_from={ckpt}')
    assert not list(work.glob('*.pth'))


# ------------------------------------------------- checkpoint file errors
def test_text_or_truncated_checkpoint_never_suggests_unsafe_loading(
        tmp_path):
    text = tmp_path / 'notes.pth'
    text.write_text('hello\n')
    with pytest.raises(CheckpointError, match='text file') as e:
        safe_torch_load(str(text))
    assert not _unsafe_hint(str(e.value))
    good = tmp_path / 'good.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(100))), good)
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match='truncated or corrupted') as e:
        safe_torch_load(str(cut))
    assert not _unsafe_hint(str(e.value))

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    evil = tmp_path / 'evil.pth'
    torch.save(dict(x=Evil()), evil)
    with pytest.raises(CheckpointError, match='does not load') as e:
        safe_torch_load(str(evil))
    assert not _unsafe_hint(str(e.value))


def test_export_student_of_a_bare_tensor(tmp_path):
    path = tmp_path / 'tensor.pth'
    torch.save(torch.ones(3), path)
    export = load_tool('export_student')
    with pytest.raises(SystemExit, match='bare tensor') as e:
        export.main([str(path), str(tmp_path / 'out.pth')])
    assert 'AttributeError' not in str(e.value)


def test_export_full_disk_message_no_tmp_left(tmp_path, monkeypatch):
    """A full disk (simulated: torch's zip writer fails as it does on
    ENOSPC) during tools/export_student.py: 'no space left on device at
    <path>', the destination untouched, no temporary file left."""
    src = tmp_path / 'kd.pth'
    torch.save(dict(state_dict={'student.w': torch.ones(3)}), src)
    dest = tmp_path / 'student.pth'
    dest.write_bytes(b'old')

    def full(obj, f, *a, **k):
        f.write(b'x' * 10)
        raise RuntimeError('[enforce fail at inline_container.cc:778] . '
                           'PytorchStreamWriter failed writing file '
                           'data/0: file write failed / unexpected pos 64')

    export = load_tool('export_student')
    # torch's zip-writer error alone is not taken for a full disk...
    monkeypatch.setattr(torch, 'save', full)
    with pytest.raises(RuntimeError, match='unexpected pos'):
        export.main([str(src), str(dest)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['kd.pth',
                                                          'student.pth']
    # ... only when the disk is full as well

    class _Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(os, 'statvfs', lambda path: _Full())
    with pytest.raises(SystemExit, match='no space left on device at .*'
                       'student.pth'):
        export.main([str(src), str(dest)])
    assert dest.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['kd.pth',
                                                          'student.pth']
    with pytest.raises(OSError) as err:  # the API raises ENOSPC itself
        atomic_torch_save(dict(a=1), str(dest))
    assert err.value.errno == errno.ENOSPC


def _can_mount_tmpfs():
    return hasattr(os, 'geteuid') and os.geteuid() == 0 and \
        sys.platform.startswith('linux')


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason='needs root (tmpfs)')
def test_export_student_on_a_full_disk(tmp_path):
    """A real full disk: a 1 MiB tmpfs and a ~4 MiB student."""
    mnt = tmp_path / 'small'
    mnt.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs',
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()}')
    try:
        src = tmp_path / 'kd.pth'
        torch.save(dict(state_dict={'student.w': torch.zeros(1 << 20),
                                    'connectors.0.w': torch.zeros(1)}), src)
        export = load_tool('export_student')
        with pytest.raises(SystemExit, match='no space left on device at'):
            export.main([str(src), str(mnt / 'student.pth')])
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(['umount', str(mnt)])


# ------------------------------------------------------------ tools/test.py
def _toy_test_cfg(tmp_path, width=8):
    from fault_toys import toy_cfg, toy_test_split
    cfg = toy_test_split(toy_cfg(tmp_path / 'eval', width=width))
    return _dump(cfg, tmp_path / f'toy_w{width}.py')


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['distillation_ckpt', 'other_width',
                                  'missing_keys', 'corrupted'])
def test_test_tool_refuses_a_checkpoint_that_does_not_fit(tmp_path, kind):
    """mmengine only warns on missing/unexpected/mismatched keys and then
    evaluates random weights; tools/test.py stops with file, config, fix."""
    from mmengine.registry import MODELS
    import fault_toys  # noqa: F401
    cfg_path = _toy_test_cfg(tmp_path)
    model = MODELS.build(dict(type='FaultToyModel', width=8))
    state = model.state_dict()
    ckpt = tmp_path / f'{kind}.pth'
    if kind == 'distillation_ckpt':
        torch.save(dict(state_dict={**{f'student.{k}': v
                                       for k, v in state.items()},
                                    'connectors.0.weight': torch.ones(1)}),
                   ckpt)
        want = r'distillation checkpoint.*export_student.py.*' \
            'distillation config'
    elif kind == 'other_width':
        other = MODELS.build(dict(type='FaultToyModel', width=16))
        torch.save(dict(state_dict=other.state_dict()), ckpt)
        want = r'does not fit the model of .*toy_w8.py.*3 size mismatches'
    elif kind == 'missing_keys':
        torch.save(dict(state_dict={k: v for k, v in state.items()
                                    if k.startswith('fc1')}), ckpt)
        want = r'2 missing keys, e.g. fc2'
    else:
        atomic_torch_save(dict(state_dict=state), str(ckpt))
        data = bytearray(ckpt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        ckpt.write_bytes(bytes(data))
        want = 'does not match its recorded SHA-256'
    test = load_tool('test')
    with pytest.raises(SystemExit, match=want) as e:
        test.main([cfg_path, str(ckpt), '--work-dir', str(tmp_path / 'e')])
    assert str(ckpt) in str(e.value)


# ------------------------------------------------------- NaN guard (Runner)
@pytest.mark.slow
def test_non_finite_update_is_never_applied_nor_saved(tmp_path):
    """lr 1e6: the update that makes the model non-finite is stopped
    before optimizer.step, the message names the last finite checkpoint,
    and every checkpoint on disk is finite."""
    from mmlckd.models.distillers.guard import non_finite
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    cfg = toy_cfg(work, max_iters=8, lr=1e6, max_keep_ckpts=10)
    time.sleep(1.1)  # a fresh second: mmengine's per-run logger/message hub
    with pytest.raises(FloatingPointError) as e:
        _train_in_process(cfg, tmp_path)
    msg = str(e.value)
    m = re.search(r'non-finite gradients at iteration (\d+)', msg)
    assert m, msg
    k = int(m.group(1))
    assert k >= 2
    # the last finite checkpoint, or (when the loss spiked first, which
    # lr 1e6 may or may not do before the gradients overflow) the last one
    # before the spike
    named = re.findall(r'(?:the last finite checkpoint is|before the '
                       r'losses left their normal range is) (\S+?\.pth)',
                       msg)
    assert named and all(p.startswith(f'{work}/iter_') for p in named), msg
    assert f'{work}/iter_{k - 1}.pth' in msg or 'spike' in msg, msg
    assert 'no non-finite update was applied' in msg
    saved = sorted(p.name for p in work.glob('*.pth'))
    assert saved == sorted(f'iter_{i}.pth' for i in range(1, k))
    for name in saved:
        assert non_finite(
            safe_torch_load(str(work / name))['state_dict']) == []


@pytest.mark.slow
def test_nan_guard_names_the_checkpoint_before_the_loss_spike(tmp_path):
    """Issue 20, case 4: the guard used to name the last finite checkpoint,
    written while the loss had already exploded, and to advise --resume
    (which keeps the checkpoint's lr). Now the checkpoint written during
    the spike is marked, the last one before it is kept (even with
    max_keep_ckpts=1) and named, and the advice is load_from + lower lr."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    # batches: iter 1-2 normal, iter 3 inputs x 1e4 (a spike), iter 4 NaN
    cfg = toy_cfg(work, max_iters=4, n=16, scale_from=8, nan_at=13)
    with pytest.raises(FloatingPointError) as e:
        _train_in_process(cfg, tmp_path)
    msg = str(e.value)
    assert 'non-finite gradients at iteration 4' in msg
    assert (f'the last finite checkpoint is {work}/iter_3.pth, written '
            'during a loss spike') in msg
    assert ('the last one written before the losses left their normal '
            f'range is {work}/iter_2.pth') in msg
    assert 'load_from=' in msg and 'not --resume' in msg
    assert 'then resume from that checkpoint' not in msg
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth',
                                                          'iter_3.pth']
    assert verify_checksum(str(work / 'iter_2.pth')) is True
    log = open(next(work.glob('*/*.log'))).read()
    assert 'iter_3.pth is written during a loss spike' in log


@pytest.mark.slow
def test_resume_with_an_lr_override_says_the_checkpoint_lr_wins(tmp_path):
    """Issue 20, case 4: --resume restores the optimizer's param groups, so
    an lr given with --cfg-options was dropped silently. Now a warning (in
    the log) says the checkpoint's lr wins and how to use the new one."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    _train_in_process(toy_cfg(work, max_iters=1, lr=0.1), tmp_path)
    runner = _train_in_process(
        toy_cfg(work, max_iters=2, lr=0.1), tmp_path, '--resume',
        '--cfg-options', 'optim_wrapper.optimizer.lr=0.01', name='r.py')
    assert runner.optim_wrapper.get_lr()['lr'][0] == pytest.approx(0.1)
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert re.search(r'--resume restores the optimizer state of .*iter_1.pth'
                     r', including its lr \(0.1\): the override '
                     r'optim_wrapper.optimizer.lr=0.01 is NOT used.*'
                     r'load_from=.*iter_1.pth optim_wrapper.optimizer.lr='
                     r'0.01', log), log[-3000:]


@pytest.mark.slow
def test_guard_off_nan_state_is_not_saved_silently(tmp_path):
    """Guard off and NaN weights: no NaN checkpoint is written, and (issue
    20, case 10) the tool exits non-zero naming the last finite checkpoint
    and the restart that works (it used to exit 0)."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    cfg = toy_cfg(work, max_iters=3)
    cfg['model']['nan_guard'] = False  # as LipschitzDistiller(nan_guard=)
    cfg['train_dataloader']['dataset']['nan_at'] = 5  # batch 2
    # mmengine names a run's logger by its start second: a Runner built in
    # the same second as the previous test's would log into that test's
    # work dir
    time.sleep(1.1)
    with pytest.raises(SystemExit, match=r'^error: training ended with '
                       r'non-finite .*from step 2 on.*last finite checkpoint '
                       r'is .*iter_1.pth.*load_from=.*not --resume') as e:
        _train_in_process(cfg, tmp_path)
    assert e.value.code != 0
    # iteration 2 made the weights NaN: neither iter_2 nor iter_3 written
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert (work / 'last_checkpoint').read_text().endswith('iter_1.pth')
    logs = sorted(work.rglob('*.log'))  # the run's timestamped log
    assert logs, sorted(str(p) for p in work.rglob('*'))
    log = open(logs[-1]).read()
    assert 'checkpoint NOT saved' in log and 'iter_1.pth' in log
    assert 'training ended with non-finite' in log


def test_student_export_refuses_a_non_finite_student(tmp_path):
    from mmengine.logging import MMLogger
    from mmlckd.engine.hooks import StudentExportHook

    class _Model(torch.nn.Module):
        teacher = None
        distill_weight = 1.0

        def student_state_dict(self):
            return {'w': torch.tensor([1.0, float('nan')])}

    class _Runner:
        work_dir = str(tmp_path)
        model = _Model()
        epoch, iter = 0, 3
        logger = MMLogger.get_instance('faults_export')

    StudentExportHook().after_train(_Runner())
    assert not (tmp_path / 'student_final.pth').exists()


# ------------------------------------------------------- output confinement
@pytest.mark.parametrize('bad', ['/tmp/student.pth', '../student.pth',
                                 'a/../../student.pth'])
def test_hook_output_paths_stay_in_the_work_dir(bad):
    from mmlckd.engine.hooks import LipschitzMonitorHook, StudentExportHook
    with pytest.raises(ValueError, match='inside the work dir'):
        StudentExportHook(filename=bad)
    with pytest.raises(ValueError, match='inside the work dir'):
        LipschitzMonitorHook(out_file=bad.replace('.pth', '.jsonl'))
    StudentExportHook(filename='export/student.pth')  # a subfolder is fine


# -------------------------------------------------------------- checksums
def test_checksum_written_verified_and_foreign_files_load_with_info(
        tmp_path):
    from mmlckd.apis import export_student
    src = tmp_path / 'kd.pth'
    torch.save(dict(state_dict={'student.w': torch.arange(1000.)}), src)
    path = export_student(str(src), str(tmp_path / 'x.pth'))
    lines = []
    assert verify_checksum(path, log=lines.append) is True
    assert 'SHA-256 verified' in lines[-1]
    foreign = str(tmp_path / 'foreign.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(3))), foreign)
    assert verify_checksum(foreign, 'teacher checkpoint',
                           log=lines.append) is False
    assert 'no SHA-256 recorded' in lines[-1] and foreign in lines[-1]
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 1  # a finite corrupted weight: still loads
    open(path, 'wb').write(bytes(data))
    safe_torch_load(path)
    with pytest.raises(CheckpointError, match='recorded SHA-256'):
        verify_checksum(path)


# ------------------------------------------- distiller (tiny mmdet models)
def _build(student, teacher, scope='mmdet', checkpoint=None,
           teacher_scope=None, **kw):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    teacher_cfg = dict(config=dict(model=teacher,
                                   default_scope=teacher_scope or scope),
                       checkpoint=checkpoint)
    teacher_cfg.update(kw.pop('teacher_kw', {}))
    kw.setdefault('terms', None)  # the backbone's recorded layers only
    return MODELS.build(dict(type='mmlckd.LipschitzDistiller',
                             student=student, teacher=teacher_cfg,
                             probe_input_size=(64, 64), **kw))


def _det(**kw):
    from mmlckd.testing import det_model
    return det_model('retinanet', **kw)


@pytest.mark.parametrize('kind', ['width', 'num_classes'])
def test_teacher_checkpoint_of_another_architecture_is_one_message(
        tmp_path, kind):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    other = _det(base=16)  # the teacher config is base=32
    if kind == 'num_classes':
        other = _det(base=32)
        other.bbox_head.num_classes = 10
    path = tmp_path / 'teacher.pth'
    torch.save(dict(state_dict=MODELS.build(other).state_dict()), path)
    with pytest.raises(RuntimeError) as e:
        _build(_det(), _det(base=32), checkpoint=str(path))
    msg = str(e.value)
    assert msg.startswith('the teacher checkpoint') and str(path) in msg
    assert 'inline teacher.config' in msg and 'size mismatch' in msg
    n = int(re.search(r'(\d+) size mismatches', msg).group(1))
    assert n >= (2 if kind == 'num_classes' else 50)
    assert msg.count('(model ') == min(n, 3)  # examples, not n lines
    assert '\n' not in msg and len(msg) < 1200


def test_segmentor_teacher_of_a_detector_is_named():
    from mmlckd.testing import seg_model
    teacher = seg_model(base=32)
    teacher.data_preprocessor.pop('size', None)
    with pytest.raises(ValueError, match='the teacher is a segmentor') as e:
        _build(_det(), teacher, teacher_scope='mmseg')
    assert 'channel_conversion' not in str(e.value)


def test_channel_conversion_compared_under_one_name():
    """mmseg keeps bgr_to_rgb in ``channel_conversion``, mmengine/mmdet in
    ``_channel_conversion``: the same setting must compare equal."""
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmlckd.models.distillers.teacher import preprocessor_settings
    kw = dict(mean=[1., 2., 3.], std=[4., 5., 6.], bgr_to_rgb=True)
    det, seg = DetDataPreprocessor(**kw), SegDataPreProcessor(**kw)
    assert preprocessor_settings(det)['bgr_to_rgb'] is True
    assert preprocessor_settings(seg)['bgr_to_rgb'] is True
    seg2 = SegDataPreProcessor(**dict(kw, bgr_to_rgb=False))
    assert preprocessor_settings(seg2)['bgr_to_rgb'] is False


def test_empty_features_is_an_error_unless_allowed():
    with pytest.raises(ValueError, match=r'features=\[\].*'
                       'allow_empty_features=True'):
        _build(_det(), _det(base=32), features=[])
    model = _build(_det(), _det(base=32), features=[],
                   allow_empty_features=True)
    assert model.pairs == []


def test_negative_loss_weights_are_an_error_unless_allowed():
    neg = dict(type='mmlckd.OFDLoss', loss_weight=-1e-4)
    with pytest.raises(ValueError, match=r'feature_loss.loss_weight=-0.0001'
                       '.*allow_negative_weights=True'):
        _build(_det(), _det(base=32), feature_loss=neg)
    _build(_det(), _det(base=32), feature_loss=neg,
           allow_negative_weights=True)


def test_stride_mismatched_feature_pairs_are_an_error_unless_allowed():
    off = [dict(student='backbone.layer1', teacher='backbone.layer2'),
           dict(student='backbone.layer2', teacher='backbone.layer3')]
    with pytest.raises(ValueError, match=r'2 feature pairs differ in spatial '
                       r'size.*\(16, 16\).*\(8, 8\).*allow_resize=True'):
        _build(_det(), _det(base=32), features=off)
    model = _build(_det(), _det(base=32), features=off, allow_resize=True)
    assert len(model.pairs) == 2


def test_nan_in_the_input_batch_is_named_as_such():
    from mmlckd.testing import det_batch
    model = _build(_det(), _det(base=32))
    model.train()
    inputs, samples = det_batch(model)
    inputs[1, 0, 5, 5] = float('nan')
    with pytest.raises(FloatingPointError) as e:
        model(inputs, samples, mode='loss')
    msg = str(e.value)
    assert 'the input batch is non-finite' in msg and 'images [1]' in msg
    assert 'data_preprocessor' in msg and 'std' in msg
    assert 'learning rate' not in msg


def test_nan_guard_checks_the_task_losses_too():
    """A NaN task loss with finite distillation terms (the guard used to
    look at the distillation terms only)."""
    from mmlckd.testing import det_batch
    model = _build(_det(), _det(base=32))
    model.train()
    inputs, samples = det_batch(model)
    h = model.student.bbox_head.retina_cls.register_forward_hook(
        lambda m, a, out: out * float('nan'))
    try:
        with pytest.raises(FloatingPointError,
                           match=r"non-finite loss \['loss_cls'\].*"
                           'before the optimizer update'):
            model(inputs, samples, mode='loss')
    finally:
        h.remove()
    model.nan_guard = False  # off: no check
    h = model.student.bbox_head.retina_cls.register_forward_hook(
        lambda m, a, out: out * float('nan'))
    losses = model(inputs, samples, mode='loss')
    h.remove()
    assert not all(bool(torch.isfinite(v).all()) for v in losses['loss_cls'])


def test_teacher_checkpoint_with_finite_corrupted_weights(tmp_path):
    """Written by the project (SHA-256 sidecar), then altered: refused."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    state = MODELS.build(_det(base=32)).state_dict()
    path = tmp_path / 'teacher.pth'
    atomic_torch_save(dict(state_dict=state), str(path))
    _build(_det(), _det(base=32), checkpoint=str(path))  # verified: fine
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='teacher checkpoint .*'
                       'does not match its recorded SHA-256'):
        _build(_det(), _det(base=32), checkpoint=str(path))


@pytest.mark.slow
def test_lr_1e6_distillation_stops_before_the_update(voc_devkit, tmp_path,
                                                      teacher_ckpt):
    """The issue's case on a tiny RetinaNet distillation: the guard stops
    the first non-finite step before its update, names the last finite
    checkpoint, and every checkpoint written is finite."""
    from mmengine.runner import Runner
    from engine_toys import tiny_cfg
    from mmlckd.models.distillers.guard import non_finite
    work = tmp_path / 'w'
    cfg = tiny_cfg(voc_devkit, work, teacher_ckpt, max_iters=4)
    cfg.custom_hooks = [h for h in cfg.custom_hooks
                        if h['type'] != 'RankDumpHook']
    cfg.default_hooks.checkpoint = dict(type='mmlckd.SafeCheckpointHook',
                                        interval=1, by_epoch=False)
    cfg.optim_wrapper.optimizer.lr = 1e6
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FloatingPointError, match='before the optimizer '
                       'update') as e:
        runner.train()
    saved = sorted(work.glob('iter_*.pth'))
    assert saved, 'at least the first (finite) step is checkpointed'
    assert f'the last finite checkpoint is {saved[-1]}' in str(e.value)
    assert runner.iter == len(saved)  # the failing step was not counted
    for path in saved:
        assert non_finite(
            safe_torch_load(str(path))['state_dict']) == []
    # no optimizer update applied: the parameters are finite (buffers such
    # as BN running stats were updated by the failing forward itself, which
    # is why the message points to the checkpoint to resume from)
    params = dict(runner.model.named_parameters())
    assert non_finite(params) == []


# ------------------------------------- silent distillation setups (issue 20)
def test_frozen_student_is_an_error_naming_the_recorded_layers():
    """Issue 20, cases 5 and 20: with backbone.frozen_stages=4 the
    distillation gradient reached no student parameter and nothing was said
    (or, with automatic weights, a connector warm-up was blamed). Now the
    recorded layers without a trainable parameter are named: an error when
    all are, a warning when some are."""
    from mmlckd.cli.run_checks import distill_setup_problems
    student = _det()
    student['backbone']['frozen_stages'] = 4
    errors, _ = distill_setup_problems(_build(student, _det(base=32)), 100)
    assert len(errors) == 1
    assert re.search(r"recorded layers \['backbone.layer1.1.relu', .*"
                     r"'backbone.layer4.1.relu'\] have no trainable "
                     r'parameter.*would not be distilled.*frozen_stages',
                     errors[0]), errors
    student['backbone']['frozen_stages'] = 2
    errors, warnings = distill_setup_problems(
        _build(student, _det(base=32)), 100)
    assert errors == []
    assert any("['backbone.layer1.1.relu', 'backbone.layer2.1.relu'] have "
               'no trainable parameter' in w for w in warnings), warnings


def test_balance_iters_not_shorter_than_the_run_is_an_error():
    """Issue 20, case 6: balance.iters >= max_iters left every distillation
    weight at 0 for the whole run and exported a "distilled" student."""
    from mmlckd.cli.run_checks import distill_setup_problems
    model = _build(_det(), _det(base=32), balance=dict(iters=10))
    errors, _ = distill_setup_problems(model, 10)
    assert any(re.search(r'model.balance.iters=10 .* not shorter than the '
                         r'run \(10 iterations\).*stay 0.*Lower '
                         r'balance.iters', e) for e in errors), errors
    assert distill_setup_problems(model, 11)[0] == []


def test_response_kd_on_a_multi_call_module_without_call_warns():
    """Issue 20, case 7: response KD on bbox_head.retina_cls (called once
    per FPN level) without call= distilled the last level only, silently."""
    from mmlckd.cli.run_checks import distill_setup_problems
    entry = dict(student='bbox_head.retina_cls',
                 teacher='bbox_head.retina_cls',
                 loss=dict(type='mmlckd.KDLoss', activation='sigmoid'))
    _, warnings = distill_setup_problems(
        _build(_det(), _det(base=32), response=[entry]), 100)
    assert any(re.search(r"'bbox_head.retina_cls': that module runs 5 times "
                         r".*only its last call is distilled.*call='all'", w)
               for w in warnings), warnings
    _, warnings = distill_setup_problems(
        _build(_det(), _det(base=32), response=[dict(entry, call='all')]),
        100)
    assert not any('times per forward' in w for w in warnings)


@pytest.mark.slow
def test_train_tool_stops_a_frozen_student_run_before_training(
        voc_devkit, tmp_path, teacher_ckpt):
    """The checks run in tools/train.py before the first step: non-zero
    exit, the message in the work dir's log too, no checkpoint."""
    from engine_toys import tiny_cfg
    work = tmp_path / 'w'
    cfg = tiny_cfg(voc_devkit, work, teacher_ckpt, max_iters=2)
    cfg.custom_hooks = [h for h in cfg.custom_hooks
                        if h['type'] != 'RankDumpHook']
    cfg.model.student.backbone.frozen_stages = 4
    with pytest.raises(SystemExit, match='^error: .*recorded layers .*have '
                       'no trainable parameter'):
        _train_in_process(cfg.to_dict(), tmp_path)
    assert not list(work.glob('*.pth'))
    log = open(next(work.glob('*/*.log'))).read()
    assert 'have no trainable parameter' in log


def test_annotations_of_unknown_classes_are_counted(voc_devkit, tmp_path):
    """Issue 20, case 8: a VOC box whose class is not one of the dataset's
    ('dining table' for 'diningtable') was dropped by mmdet without a word,
    and an image left without a box with it. Now counted and named once,
    with the likely spelling."""
    import shutil
    from mmengine.registry import DATASETS, init_default_scope
    from mmlckd.cli.data_checks import unknown_class_annotations
    init_default_scope('mmdet')
    root = tmp_path / 'VOCdevkit'
    shutil.copytree(osp.join(voc_devkit, 'VOC2007'), root / 'VOC2007')
    ids = (root / 'VOC2007/ImageSets/Main/trainval.txt').read_text().split()
    xml = root / 'VOC2007/Annotations' / f'{ids[0]}.xml'
    text = xml.read_text()
    names = re.findall(r'<name>([^<]+)</name>', text)
    xml.write_text(re.sub(r'<name>[^<]+</name>', '<name>dining table</name>',
                          text))  # every box of the first image
    ds = DATASETS.build(dict(
        type='VOCDataset', data_root=str(root),
        ann_file='VOC2007/ImageSets/Main/trainval.txt',
        data_prefix=dict(sub_data_root='VOC2007/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=1), pipeline=[]))
    assert len(ds) == len(ids) - 1  # mmdet dropped the image silently
    msgs = unknown_class_annotations(ds)
    assert len(msgs) == 1, msgs
    n = len(names)
    assert re.search(rf"hold {n} boxes of classes that are not among the "
                     rf"dataset's 20 classes: \{{'dining table': {n}\}}.*"
                     rf'{n} boxes dropped, 1 images left without a box.*'
                     r"'dining table' -> 'diningtable'\?", msgs[0]), msgs[0]
    xml.write_text(text)
    assert unknown_class_annotations(ds) == []


def test_calibration_on_batches_without_a_box_warns():
    """Issue 20, case 9: the balancer calibrated on batches without a
    single positive box (filter_empty_gt=False) and its weights came out
    100x off, silently."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmlckd.cli.run_checks import CalibrationPositivesHook

    def batch(n_boxes):
        s = DetDataSample()
        s.gt_instances = InstanceData(bboxes=torch.zeros(n_boxes, 4),
                                      labels=torch.zeros(n_boxes).long())
        return dict(data_samples=[s, s])

    check = CalibrationPositivesHook(iters=4)  # measures steps 2 and 3
    got = [check.record(i, batch(3 if i < 2 else 0)) for i in range(6)]
    assert got[:3] == [None] * 3 and got[4:] == [None] * 2
    assert re.search(r'the 2 batches the calibration measured \(iterations '
                     r'3-4\) hold no ground-truth box.*filter_empty_gt=True',
                     got[3]), got[3]
    check = CalibrationPositivesHook(iters=4)
    assert [check.record(i, batch(i % 2)) for i in range(4)] == [None] * 4


def test_empty_image_set_file_is_named(voc_devkit, tmp_path, teacher_ckpt):
    """Issue 20, case 17: an empty ImageSets file ended in 'ValueError: need
    at least one array to concatenate', naming no file."""
    from engine_toys import tiny_cfg
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n')
    cfg = tiny_cfg(voc_devkit, tmp_path / 'w', teacher_ckpt)
    cfg.train_dataloader.dataset.ann_file = str(empty)
    with pytest.raises(SystemExit, match=r"image-set file '.*empty.txt' "
                       r'\(train_dataloader ann_file\) lists no image'):
        _train_in_process(cfg.to_dict(), tmp_path)


# ------------------------------------------ unclear cases, now in words
def test_empty_sidecar_is_named_not_the_checkpoint(tmp_path):
    """Issue 20, case 12: a 0-byte .sha256 beside an intact checkpoint was
    reported as a checkpoint that does not match its SHA-256."""
    path = str(tmp_path / 'iter_1.pth')
    atomic_torch_save(dict(state_dict=dict(w=torch.ones(3))), path)
    open(path + '.sha256', 'w').close()
    with pytest.raises(CheckpointError) as e:
        verify_checksum(path, 'resume checkpoint')
    msg = str(e.value)
    assert msg.startswith(f"the SHA-256 sidecar '{path}.sha256' of resume "
                          'checkpoint')
    assert 'is empty (0 bytes)' in msg and 'may be intact' in msg
    assert f'delete {path}.sha256' in msg
    assert 'does not match its recorded' not in msg


@pytest.mark.parametrize('resume', [False, True])
def test_work_dir_that_is_a_file_is_named(tmp_path, resume):
    """Issue 20, case 13: a raw FileExistsError, or with --resume "the
    folder does not exist"."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    work.write_text('notes')
    with pytest.raises(SystemExit, match=r"the work dir '.*w' is a file, "
                       r'not a folder. Pass another --work-dir'):
        _train_in_process(toy_cfg(work), tmp_path,
                          *(['--resume'] if resume else []))
    assert work.read_text() == 'notes'


def test_last_checkpoint_naming_a_deleted_file_names_the_others(tmp_path):
    """Issue 20, case 15: "resume checkpoint not found: .../iter_2.pth",
    with no word of last_checkpoint or of the iter_1.pth that exists."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    work.mkdir()
    (work / 'iter_1.pth').write_bytes(b'x' * 8)
    (work / 'student_final.pth').write_bytes(b'x' * 8)
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    with pytest.raises(SystemExit) as e:
        _train_in_process(toy_cfg(work), tmp_path, '--resume')
    msg = str(e.value)
    assert f'{work}/last_checkpoint names {work}/iter_2.pth, which does ' \
        'not exist' in msg
    assert f'--resume {work}/iter_1.pth' in msg
    assert 'student_final' not in msg


def test_resume_in_a_moved_work_dir_finds_the_checkpoint(tmp_path):
    """Issue 20, case 16: last_checkpoint holds an absolute path; after
    moving the work dir, --resume --work-dir <new> failed on <old>."""
    from mmlckd.cli.resume import resolve_resume
    new = tmp_path / 'new'
    new.mkdir()
    (new / 'iter_2.pth').write_bytes(b'x' * 8)
    (new / 'last_checkpoint').write_text(str(tmp_path / 'old/iter_2.pth'))
    cfg = Config(dict(work_dir=str(new)))
    resolve_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from == str(new / 'iter_2.pth')


def test_zero_byte_resume_checkpoint_hint_lists_resumable_ones(tmp_path):
    """Issue 20, case 22: the hint listed student_final.pth among the
    checkpoints to resume from; it cannot resume a distillation run."""
    from mmlckd.checkpoint import check_checkpoint_file
    for name in ('iter_1.pth', 'student_final.pth'):
        (tmp_path / name).write_bytes(b'x' * 8)
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    with pytest.raises(CheckpointError) as e:
        check_checkpoint_file(str(tmp_path / 'iter_2.pth'),
                              'resume checkpoint')
    assert '(in that folder: iter_1.pth)' in str(e.value)
    with pytest.raises(CheckpointError, match='student_final.pth'):
        check_checkpoint_file(str(tmp_path / 'iter_2.pth'),
                              'teacher checkpoint')


def test_teacher_checkpoint_url_says_it_is_not_fetched():
    """Issue 20, case 11: a URL as teacher.checkpoint got "not found ...
    relative paths are resolved from ...". Now: URLs are not fetched, and
    how to get the file."""
    url = 'https://' + 'checkpoints.invalid/retinanet_r50.pth'
    with pytest.raises(FileNotFoundError, match=r'is a URL: mmlckd loads '
                       r'local files only .*Download the file first.*'
                       'teacher.checkpoint to the local path') as e:
        _build(_det(), _det(base=32), checkpoint=url)
    assert 'relative paths' not in str(e.value)


def test_export_student_into_an_existing_folder(tmp_path):
    """Issue 20, case 18: "[Errno 21] Is a directory: '.outdir.NNN.tmp' ->
    'outdir'"."""
    src = tmp_path / 'kd.pth'
    torch.save(dict(state_dict={'student.w': torch.ones(3)}), src)
    out = tmp_path / 'outdir'
    out.mkdir()
    export = load_tool('export_student')
    with pytest.raises(SystemExit, match=r"the output '.*outdir' is a "
                       r'folder; give the path of the file to write, e.g. '
                       r'.*outdir/student.pth'):
        export.main([str(src), str(out)])
    assert list(out.iterdir()) == []
    assert not list(tmp_path.glob('.*.tmp'))


def test_distillation_config_as_teacher_config_is_named():
    """Issue 20, case 19: "190 missing keys ... set
    teacher.allow_missing_keys=True", which led to another error."""
    kd = dict(type='mmlckd.LipschitzDistiller', student=_det(),
              teacher=dict(config='work_dirs/teacher_r50.py',
                           checkpoint=None))
    with pytest.raises(ValueError, match=r'is a distillation config '
                       r'\(model.type=LipschitzDistiller\).*the plain config '
                       r"the teacher was trained with \(that distillation "
                       r"config's own teacher is 'work_dirs/teacher_r50.py'"
                       r'\)') as e:
        _build(_det(), kd)
    assert 'allow_missing_keys' not in str(e.value)


def test_random_teacher_warning_reaches_the_log(tmp_path):
    """Issue 20, case 25: the teacher.checkpoint=None warning went to
    stderr only, not into the work dir's log."""
    from mmengine.logging import MMLogger
    log = tmp_path / 'run.log'
    MMLogger.get_instance('faults_random_teacher', log_file=str(log))
    _build(_det(), _det(base=32), checkpoint=None)
    assert 'teacher has RANDOM weights' in log.read_text()


@pytest.mark.slow
def test_corrupted_teacher_checkpoint_is_a_one_line_tool_error(
        voc_devkit, tmp_path, teacher_ckpt):
    """Issue 20, case 21: a flipped byte in a teacher checkpoint with a
    sidecar arrived as a raw CheckpointError traceback from
    tools/train.py."""
    from engine_toys import tiny_cfg
    path = tmp_path / 'teacher.pth'
    atomic_torch_save(safe_torch_load(teacher_ckpt), str(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    cfg = tiny_cfg(voc_devkit, tmp_path / 'w', str(path))
    cfg.custom_hooks = [h for h in cfg.custom_hooks
                        if h['type'] != 'RankDumpHook']
    with pytest.raises(SystemExit, match=r"^error: teacher checkpoint '.*"
                       "teacher.pth' does not match its recorded SHA-256"):
        _train_in_process(cfg.to_dict(), tmp_path)


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_names_the_file_and_the_fix(
        tmp_path, monkeypatch):
    """Issue 20, case 14: a raw "OSError: [Errno 28]" from mmengine's
    save_checkpoint, with no path and no advice (nothing was lost)."""
    import mmengine.runner.runner as runner_mod
    from fault_toys import toy_cfg
    real, calls = runner_mod.save_checkpoint, [0]

    def full_on_second(checkpoint, filename, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            with open(filename, 'wb') as f:
                f.write(b'partial')
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(checkpoint, filename, *args, **kwargs)

    monkeypatch.setattr(runner_mod, 'save_checkpoint', full_on_second)
    work = tmp_path / 'w'
    with pytest.raises(SystemExit, match=r'^error: no space left on device '
                       r'while writing the checkpoint .*iter_2.pth. Nothing '
                       r'was lost.*iter_1.pth and last_checkpoint are intact'
                       r'.*--resume'):
        _train_in_process(toy_cfg(work, max_iters=3), tmp_path)
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert not list(work.glob('.*.tmp'))
    assert verify_checksum(str(work / 'iter_1.pth')) is True


@pytest.mark.slow
def test_resume_with_another_number_of_processes_says_the_batch_changed(
        tmp_path):
    """Issue 20, case 23: resuming a 2-process run with 1 process said
    nothing of the global batch being halved. Checkpoints now record the
    number of processes and the per-process batch."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    _train_in_process(toy_cfg(work, max_iters=1), tmp_path)
    path = str(work / 'iter_1.pth')
    ckpt = safe_torch_load(path)
    assert ckpt['meta']['world_size'] == 1
    assert ckpt['meta']['batch_size'] == 4
    ckpt['meta']['world_size'] = 2  # as a 2-process run writes it
    atomic_torch_save(ckpt, path)
    runner = _train_in_process(toy_cfg(work, max_iters=2), tmp_path,
                               '--resume', name='r.py')
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert re.search(r'the resume checkpoint .*iter_1.pth was written by a '
                     r'run of 2 processes; this run has 1: the global batch '
                     r'is now 4 instead of 8.*tools/dist_train.sh CONFIG 2 '
                     r'--resume', log), log[-2000:]


@pytest.mark.slow
def test_dist_train_with_its_port_in_use_says_set_port(tmp_path):
    """Issue 20, case 24: PORT in use ended in torchrun's "EADDRINUSE ...
    port: N". Now checked first: which port, and "set PORT"."""
    import socket
    busy = socket.socket()
    busy.bind(('127.0.0.1', 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = subprocess.run(
            ['bash', 'tools/dist_train.sh', 'no_such_cfg.py', '2'],
            cwd=REPO, capture_output=True, text=True, timeout=60,
            env=dict(os.environ, PORT=str(port), PYTHON=sys.executable))
    finally:
        busy.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f'error: port {port} (PORT, torchrun\'s master port) is in use' \
        in r.stderr
    assert f'PORT={port + 1} bash tools/dist_train.sh no_such_cfg.py 2' \
        in r.stderr
    assert 'EADDRINUSE' not in r.stderr


@pytest.mark.slow
def test_resume_set_in_the_config_moves_nothing_aside(tmp_path):
    """resume=True in the config (not --resume) is a resume too: the work
    dir's checkpoints stay where mmengine's auto-resume looks for them."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    _train_in_process(toy_cfg(work, max_iters=1), tmp_path)
    cfg = toy_cfg(work, max_iters=2)
    cfg['resume'] = True
    runner = _train_in_process(cfg, tmp_path, name='r.py')
    assert runner.iter == 2
    assert not (work / 'previous_runs').exists()
    assert (work / 'iter_2.pth').is_file()


# ------------------------------- a fresh pass (issue 20, closing note)
def test_config_with_a_syntax_error_names_the_file_and_line(tmp_path):
    """A config with a bracket left open: mmengine parsed it as
    '<unknown>' and ended in a raw SyntaxError traceback naming no file."""
    bad = tmp_path / 'exp.py'
    bad.write_text("model = dict(type='X')\ntrain_cfg = dict(max_iters=2\n")
    train = load_tool('train')
    with pytest.raises(SystemExit, match=rf"^error: the config '{bad}' is "
                       r"not valid Python: '\(' was never closed \(line 2: "
                       r'train_cfg = dict\(max_iters=2\)'):
        train.main([str(bad)])


def test_config_path_typo_is_a_one_line_error(tmp_path):
    """A mistyped config path: a raw FileNotFoundError traceback from
    mmengine's Config.fromfile."""
    (tmp_path / 'retinanet_r18.py').write_text('x = 1\n')
    (tmp_path / 'model.pth').write_bytes(b'x')
    test = load_tool('test')
    with pytest.raises(SystemExit, match=r"^error: config file not found: "
                       r"'.*retinanet_r81.py' .*Close names in .*"
                       r"\['retinanet_r18.py'\]"):
        test.main([str(tmp_path / 'retinanet_r81.py'),
                   str(tmp_path / 'model.pth')])


@pytest.mark.parametrize('weight', [float('nan'), float('inf')])
def test_non_finite_loss_weight_is_an_error_at_build(weight):
    """feature_loss.loss_weight=nan trained until the first step, where the
    NaN guard blamed an overflow and advised a lower learning rate."""
    with pytest.raises(ValueError, match=r'feature_loss.loss_weight=(nan|'
                       r'inf) is not a finite number'):
        _build(_det(), _det(base=32), feature_loss=dict(
            type='mmlckd.OFDLoss', loss_weight=weight))
    with pytest.raises(ValueError, match=r'terms.neck.loss_weight=(nan|inf)'
                       ' is not a finite number'):
        _build(_det(), _det(base=32), terms=dict(neck=dict(
            type='mmlckd.NeckPKDTerm', loss_weight=weight)))


def test_unknown_balance_setting_names_the_settings():
    """balance=dict(iter=3): a raw "LossBalancer.__init__() got an
    unexpected keyword argument 'iter'"."""
    with pytest.raises(ValueError, match=r"model.balance has no setting "
                       r"\['iter'\] \('iter' -> 'iters'\?\); its settings "
                       r"are \['fraction', 'iters', 'by', 'log_interval'\]"):
        _build(_det(), _det(base=32), balance=dict(iter=3))


def test_distiller_key_typo_names_the_likely_key():
    """model.studnet=...: the error blamed a base config merged into the
    distiller (add _delete_=True), not the typo."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    with pytest.raises(TypeError, match=r"unexpected config keys "
                       r"\['studnet'\] \(a typo\? 'studnet' -> 'student'\?"
                       r"\)\.$"):
        MODELS.build(dict(type='mmlckd.LipschitzDistiller', student=_det(),
                          teacher=dict(config=dict(model=_det(base=32))),
                          studnet=dict(), terms=None))


def test_resume_from_a_folder_names_its_latest_checkpoint(tmp_path):
    """--resume <work dir> (a folder): "checkpoint not found: '<dir>'",
    although the folder holds the checkpoints."""
    from mmlckd.cli.resume import resolve_resume
    old = tmp_path / 'old_run'
    old.mkdir()
    (old / 'iter_2.pth').write_bytes(b'x')
    (old / 'last_checkpoint').write_text(str(old / 'iter_2.pth'))
    cfg = Config(dict(work_dir=str(tmp_path / 'new')))
    with pytest.raises(SystemExit, match=rf"--resume: '{old}' is a folder, "
                       rf'not a checkpoint. Its latest checkpoint is '
                       rf'{old}/iter_2.pth: pass --resume {old}/iter_2.pth'):
        resolve_resume(cfg, str(old))
    assert 'resume' not in cfg


def test_export_through_a_symlinked_folder_keeps_the_checkpoint(tmp_path):
    """export_student.py w/iter_2.pth alias/iter_2.pth, alias -> w: the
    same file under another name; the export replaced the distillation
    checkpoint (and its sidecar) with the student."""
    work = tmp_path / 'w'
    work.mkdir()
    src = work / 'iter_2.pth'
    atomic_torch_save(dict(state_dict={'student.w': torch.ones(3),
                                       'connectors.0.w': torch.ones(2)}),
                      str(src))
    before = sha256_file(str(src))
    (tmp_path / 'alias').symlink_to(work)
    export = load_tool('export_student')
    with pytest.raises(SystemExit, match=r"^error: the output '.*alias/"
                       r"iter_2.pth' is the input checkpoint .*\(both are "
                       r".*w/iter_2.pth\): refusing to overwrite it"):
        export.main([str(src), str(tmp_path / 'alias' / 'iter_2.pth')])
    assert sha256_file(str(src)) == before
    assert verify_checksum(str(src)) is True


def test_teacher_of_other_classes_distils_features_only_when_told():
    """A teacher with num_classes=10 for a 20-class student: the build
    error advises teacher.check_num_classes=False "to distil features
    only"; with it, terms='auto' still added prediction KD, which failed at
    the first step (logits (2, 180, 8, 8) vs (2, 90, 8, 8))."""
    from mmlckd.testing import det_batch
    teacher = _det(base=32)
    teacher['bbox_head']['num_classes'] = 10
    with pytest.raises(ValueError, match='check_num_classes=False to distil '
                       'features only'):
        _build(_det(), teacher, terms='auto')
    model = _build(_det(), teacher, terms='auto',
                   teacher_kw=dict(check_num_classes=False))
    # the built-in backbone terms and the neck term; no 'preds'
    assert sorted(model.terms) == ['feat', 'lipschitz', 'neck']
    model.train()
    losses = model(*det_batch(model), mode='loss')
    assert 'loss_neck' in losses and 'loss_preds' not in losses
    with pytest.raises(ValueError, match=r"PredictionKDTerm: the student's "
                       r'bbox_head.retina_cls has 180 output channels and '
                       r"the teacher's 90 .*Leave the term out"):
        _build(_det(), teacher, teacher_kw=dict(check_num_classes=False),
               terms=dict(preds=dict(type='mmlckd.PredictionKDTerm')))


def test_test_tool_out_that_is_not_a_pickle_is_named_first(tmp_path):
    """tools/test.py --out results.json: mmengine's raw "ValueError: The
    output file must be a pkl file." traceback, after the model and the
    data were built."""
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'x')
    test = load_tool('test')
    with pytest.raises(SystemExit, match=r"^error: --out '.*results.json': "
                       r'.*must end in .pkl or .pickle \(e.g. --out '
                       r'.*results.pkl\)'):
        test.main([str(tmp_path / 'any_config.py'), str(ckpt), '--out',
                   str(tmp_path / 'results.json')])


def test_read_only_work_dir_is_named(tmp_path):
    """A work dir on a read-only disk (or without write permission): a raw
    "OSError: [Errno 30] Read-only file system: '<dir>/.mmlckd_run.lock'"
    traceback."""
    from fault_toys import toy_cfg
    work = tmp_path / 'ro'
    work.mkdir()
    mounted = False
    if _can_mount_tmpfs():
        mounted = subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(work)],
            capture_output=True).returncode == 0
    if not mounted:
        work.chmod(0o555)  # EACCES for a user that is not root
        if os.access(str(work), os.W_OK):
            pytest.skip('cannot make a read-only folder here')
    try:
        cfg = _dump(toy_cfg(work, max_iters=1), tmp_path / 'toy.py')
        with pytest.raises(SystemExit, match=rf'^error: cannot write in the '
                           rf'work dir {work} \((Read-only file system|'
                           r'Permission denied): .*\.mmlckd_run\.lock\).*'
                           r'Pass a --work-dir on a writable disk'):
            load_tool('train').main([cfg])
    finally:
        if mounted:
            subprocess.run(['umount', str(work)])
        work.chmod(0o755)


@pytest.mark.parametrize('key', ['max_iters', 'max_epochs'])
def test_zero_length_run_is_an_error(tmp_path, key):
    """--cfg-options train_cfg.max_iters=0: exit 0 with "student exported"
    (the untrained student as student_final.pth) and no word."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'
    cfg = toy_cfg(work, max_iters=1)
    if key == 'max_epochs':
        cfg['train_cfg'] = dict(type='EpochBasedTrainLoop', max_epochs=1)
    cfg = _dump(cfg, tmp_path / 'toy.py')
    with pytest.raises(SystemExit, match=rf'^error: train_cfg.{key}=0: the '
                       r'run would train nothing .*student_final.pth.*'
                       rf'--cfg-options train_cfg.{key}=12'):
        load_tool('train').main([cfg, '--cfg-options', f'train_cfg.{key}=0'])
    assert not work.exists()


def test_test_tool_config_without_a_test_split_is_named(tmp_path):
    """A config without test_dataloader/test_cfg/test_evaluator: the model
    was built and the checkpoint loaded, then mmengine's raw RuntimeError
    ("self._test_loop should not be None ...")."""
    from fault_toys import toy_cfg
    cfg = toy_cfg(tmp_path / 'w')
    cfg.update(val_dataloader=cfg['train_dataloader'], val_cfg=dict(),
               val_evaluator=dict(type='Accuracy'))
    path = _dump(cfg, tmp_path / 'toy.py')
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'x')
    with pytest.raises(SystemExit, match=r"^error: the config '.*toy.py' has "
                       r'no test_dataloader, test_cfg, test_evaluator: .*'
                       r'\(to test on the validation split: test_dataloader '
                       r'= val_dataloader, test_cfg = val_cfg, '
                       r'test_evaluator = val_evaluator\)'):
        load_tool('test').main([path, str(ckpt)])


@pytest.mark.parametrize('key', ['teacher', 'load_from'])
def test_relative_path_from_another_folder_names_both_places(
        tmp_path, monkeypatch, key):
    """teacher.checkpoint='teacher.pth' (next to the config) with the tool
    run from another folder: a traceback ending in "teacher checkpoint not
    found ... relative paths are resolved from <cwd>", after the student
    and the teacher were built."""
    from fault_toys import toy_cfg
    exp = tmp_path / 'exp'
    exp.mkdir()
    (exp / 'teacher.pth').write_bytes(b'x')
    cfg = toy_cfg(tmp_path / 'w')
    if key == 'teacher':
        cfg['model'] = dict(type='mmlckd.LipschitzDistiller', student=dict(),
                            teacher=dict(config='t.py',
                                         checkpoint='teacher.pth'))
        name = 'model.teacher.checkpoint'
    else:
        cfg['load_from'] = 'teacher.pth'
        name = 'load_from'
    path = _dump(cfg, exp / 'cfg.py')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SystemExit, match=rf"^error: {name}='teacher.pth' is "
                       rf'a relative path, read from the current folder '
                       rf'{elsewhere}, where it does not exist; the config\'s '
                       rf'folder has it: {exp}/teacher.pth'):
        load_tool('train').main([path])
    assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_training_set_emptied_by_the_filter_is_named(voc_devkit, tmp_path,
                                                     teacher_ckpt):
    """Every box of the split of a class the dataset does not know (so
    filter_empty_gt drops every image): mmengine's raw "ValueError: need at
    least one array to concatenate" from runner.train()."""
    import shutil
    from engine_toys import tiny_cfg
    root = tmp_path / 'VOCdevkit'
    shutil.copytree(osp.join(voc_devkit, 'VOC2007'), root / 'VOC2007')
    for xml in (root / 'VOC2007/Annotations').glob('*.xml'):
        xml.write_text(re.sub(r'<name>[^<]+</name>',
                              '<name>dining table</name>', xml.read_text()))
    work = tmp_path / 'w'
    cfg = tiny_cfg(str(root), work, teacher_ckpt)
    cfg.custom_hooks = [h for h in cfg.custom_hooks
                        if h['type'] != 'RankDumpHook']
    with pytest.raises(SystemExit, match=r"^error: the training set is empty: "
                       r"every image listed in 'VOC2007/ImageSets/Main/"
                       r"trainval.txt' .* was dropped by the dataset's filter"
                       r'.*filter_empty_gt=False'):
        _train_in_process(cfg.to_dict(), tmp_path)
    assert not list(work.glob('*.pth'))


def test_teacher_setting_typo_is_an_error():
    """teacher=dict(config=..., checkpiont=...): the checkpoint was never
    read; the run went on with a random teacher and the generic warning
    "teacher.checkpoint is None"."""
    with pytest.raises(ValueError, match=r"^teacher has no setting "
                       r"\['checkpiont'\] \(a typo\? 'checkpiont' -> "
                       r"'checkpoint'\?\); its settings are \['config', "
                       r"'checkpoint', 'allow_missing_keys', "
                       r"'check_num_classes', 'skip_unread'\]"):
        _build(_det(), _det(base=32),
               teacher_kw=dict(checkpiont='teacher.pth'))


def _other_mean(model):
    model['data_preprocessor']['mean'] = [0.0, 0.0, 0.0]
    return model


@pytest.mark.parametrize('kind,kw,teacher,error,pattern', [
    ('module_only_in_teacher',
     dict(features=[dict(student='backbone.layer5',
                         teacher='backbone.layer4')]), None, KeyError,
     r"student has no submodule 'backbone.layer5'. Close matches: "
     r"\['backbone.layer4'"),
    ('other_normalisation', {}, _other_mean, ValueError,
     r'teacher and student data preprocessors differ in mean: teacher '
     r'\[0.0, 0.0, 0.0\] vs student .*copy the teacher\'s data_preprocessor'),
    ('terms_typo', dict(terms='atuo'), None, TypeError,
     r"terms must be 'auto', None or a dict name -> term config, got "
     r"'atuo'"),
    ('terms_type_typo',
     dict(terms=dict(preds=dict(type='mmlckd.PredictonKDTerm'))), None,
     KeyError, r'mmlckd.PredictonKDTerm is not in the .*registry'),
    ('balance_by_unknown', dict(balance=dict(by='gradient')), None,
     ValueError, r"balance by must be 'grad' or 'loss', got 'gradient'"),
    ('weight_as_string',
     dict(feature_loss=dict(type='mmlckd.OFDLoss', loss_weight='1e-4')),
     None, TypeError, r"feature_loss.loss_weight must be a number or "
     r"'auto', got '1e-4'"),
    ('negative_fraction', dict(balance=dict(fraction=-0.5)), None,
     ValueError, r"balance fraction of 'loss_lipschitz' must be > 0, got "
     r'-0.5'),
])
def test_distiller_setup_faults_already_named(kind, kw, teacher, error,
                                              pattern):
    """Faults of the fresh pass that were already a clear error at build
    time (docs/reliability.md, "no change needed"): kept so."""
    t = _det(base=32)
    if teacher is not None:
        t = teacher(t)
    with pytest.raises(error, match=pattern):
        _build(_det(), t, **kw)


def test_distillation_checkpoint_as_the_teacher_is_named(tmp_path):
    """An iter_N.pth of a distillation run as teacher.checkpoint (fresh
    pass, no change needed): named, with the export that fixes it."""
    path = tmp_path / 'iter_2.pth'
    atomic_torch_save(dict(state_dict={'student.backbone.w': torch.ones(1),
                                       'connectors.0.w': torch.ones(1)}),
                      str(path))
    with pytest.raises(ValueError, match=r'is a distillation checkpoint '
                       r'\(keys "student.\*"\). Export the student first: '
                       r'python tools/export_student.py'):
        _build(_det(), _det(base=32), checkpoint=str(path))


def test_nccl_config_on_a_cpu_machine_runs_on_gloo(monkeypatch):
    """tools/dist_train.sh CONFIG 2 with env_cfg.dist_cfg.backend=nccl on a
    machine without CUDA (fresh pass, no change needed: 2 processes
    trained, rc 0): the tools switch the config to gloo."""
    from mmlckd.compat import adapt_cfg_for_cpu_dist
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(launcher='pytorch', model=dict(type='X'),
                      env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    adapt_cfg_for_cpu_dist(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == \
        'mmlckd.CPUAwareDistributedDataParallel'


def test_export_and_launcher_faults_already_named(tmp_path, monkeypatch):
    """Fresh-pass faults that were already clear (no change needed):
    export onto its own input, export of a plain student checkpoint, and
    --launcher pytorch outside torchrun."""
    src = tmp_path / 'iter_2.pth'
    atomic_torch_save(dict(state_dict={'student.w': torch.ones(3)}),
                      str(src))
    before = sha256_file(str(src))
    export = load_tool('export_student')
    with pytest.raises(SystemExit, match='refusing to overwrite it'):
        export.main([str(src), str(src)])
    assert sha256_file(str(src)) == before
    plain = tmp_path / 'student_final.pth'
    atomic_torch_save(dict(state_dict={'backbone.w': torch.ones(3)}),
                      str(plain))
    with pytest.raises(SystemExit, match=r'has no "student.\*" keys: it is '
                       'not a LipschitzDistiller checkpoint'):
        export.main([str(plain), str(tmp_path / 'out.pth')])
    from mmlckd.compat import init_cpu_dist
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match='--launcher pytorch needs the '
                       'environment variable RANK; start the job with '
                       r'torchrun \(tools/dist_train.sh\)'):
        init_cpu_dist('pytorch')


@pytest.mark.slow
def test_symlinked_work_dir_moves_the_previous_run_aside(tmp_path):
    """A work dir that is a symlink to a folder on another disk (fresh pass,
    no change needed): the second fresh run locks and moves the first
    run aside inside the real folder; nothing is lost."""
    from fault_toys import toy_cfg
    real = tmp_path / 'disk' / 'run'
    real.mkdir(parents=True)
    link = tmp_path / 'w'
    link.symlink_to(real)
    _train_in_process(toy_cfg(link, max_iters=2, max_keep_ckpts=3),
                      tmp_path)
    first = {p.name: sha256_file(str(p)) for p in real.glob('iter_*.pth')}
    assert sorted(first) == ['iter_1.pth', 'iter_2.pth']
    time.sleep(1.1)  # a Runner of its own second (mmengine's names)
    _train_in_process(toy_cfg(link, max_iters=1, max_keep_ckpts=3),
                      tmp_path, name='again.py')
    kept = list((real / 'previous_runs').iterdir())
    assert len(kept) == 1
    assert {p.name: sha256_file(str(p))
            for p in kept[0].glob('iter_*.pth')} == first
    assert sorted(p.name for p in real.glob('*.pth')) == ['iter_1.pth']
    assert link.is_symlink()


@pytest.mark.parametrize('resume', [False, True])
def test_work_dir_symlink_to_nothing_is_named(tmp_path, resume):
    """A work dir that is a symlink whose target is gone (a disk not
    mounted): a raw "FileExistsError: [Errno 17] File exists" from
    os.makedirs (with --resume: "the folder does not exist")."""
    from fault_toys import toy_cfg
    link = tmp_path / 'w'
    link.symlink_to(tmp_path / 'scratch' / 'run')
    cfg = _dump(toy_cfg(link, max_iters=1), tmp_path / 'toy.py')
    with pytest.raises(SystemExit, match=rf"^error: the work dir '{link}' is "
                       rf"a symlink to '{tmp_path}/scratch/run', which does "
                       r'not exist .*Create or mount that folder'):
        load_tool('train').main([cfg] + (['--resume'] if resume else []))
    assert link.is_symlink() and not (tmp_path / 'scratch').exists()


@pytest.mark.slow
def test_ctrl_c_while_writing_a_checkpoint_loses_nothing(tmp_path,
                                                         monkeypatch):
    """Ctrl-C (KeyboardInterrupt) in the middle of writing iter_2.pth (no
    change needed): the partial file is removed, iter_1.pth and
    last_checkpoint are intact, the work dir lock is released, and
    --resume continues to the end."""
    import mmengine.runner.runner as runner_mod
    from fault_toys import toy_cfg
    real = runner_mod.save_checkpoint
    calls = [0]

    def interrupted(checkpoint, filename, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            with open(filename, 'wb') as f:
                f.write(b'PK\x03\x04 half a checkpoint')
            raise KeyboardInterrupt
        return real(checkpoint, filename, *args, **kwargs)

    monkeypatch.setattr(runner_mod, 'save_checkpoint', interrupted)
    work = tmp_path / 'w'
    with pytest.raises(KeyboardInterrupt):
        _train_in_process(toy_cfg(work, max_iters=3, max_keep_ckpts=3),
                          tmp_path)
    assert calls[0] == 2
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert not list(work.glob('.*.tmp'))
    assert osp.basename((work / 'last_checkpoint').read_text().strip()) \
        == 'iter_1.pth'
    assert verify_checksum(str(work / 'iter_1.pth')) is True
    monkeypatch.setattr(runner_mod, 'save_checkpoint', real)
    time.sleep(1.1)  # a Runner of its own second (mmengine's names)
    runner = _train_in_process(toy_cfg(work, max_iters=3, max_keep_ckpts=3),
                               tmp_path, '--resume', name='resume.py')
    assert runner.iter == 3  # the lock was released; resumed from 1
    assert sorted(p.name for p in work.glob('*.pth')) == [
        'iter_1.pth', 'iter_2.pth', 'iter_3.pth']


@pytest.mark.slow
def test_resume_with_other_distillation_terms_says_so(tmp_path):
    """--resume of a run with terms=None under a config that adds terms:
    the run went on from the checkpoint's iteration with the new losses
    (total loss 4.2 -> 16.3 on the tiny RetinaNet), without a word."""
    from fault_toys import toy_cfg
    work = tmp_path / 'w'

    def cfg(terms, iters):
        c = toy_cfg(work, max_iters=iters, max_keep_ckpts=3)
        c['model'] = dict(type='FaultToyTermsKD', terms=terms)
        return c

    _train_in_process(cfg([], 1), tmp_path)
    meta = safe_torch_load(str(work / 'iter_1.pth'))['meta']
    assert meta['distill_losses'] == []
    time.sleep(1.1)  # a Runner of its own second (mmengine's names)
    runner = _train_in_process(cfg(['neck', 'preds'], 2), tmp_path,
                               '--resume', name='resume.py')
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert re.search(r'the resume checkpoint .*iter_1.pth was written by a '
                     r"run that distilled \[\]; this run distils "
                     r"\['loss_neck', 'loss_preds'\] \(added \['loss_neck', "
                     r"'loss_preds'\]\).*start a new run: --cfg-options "
                     r'load_from=.*iter_1.pth \(without --resume\)', log), \
        log[-3000:]
    # the same terms: no word
    time.sleep(1.1)
    runner = _train_in_process(cfg(['neck', 'preds'], 3), tmp_path,
                               '--resume', name='resume2.py')
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'was written by a run that distilled' not in log
    # what it records of a real distiller
    from mmlckd.engine.hooks.checkpoint_checks import distill_losses
    assert distill_losses(_build(_det(), _det(base=32), terms='auto')) == [
        'loss_feat', 'loss_lipschitz', 'loss_neck', 'loss_preds']
    from fault_toys import FaultToyModel
    assert distill_losses(FaultToyModel()) is None  # not a distiller
