"""LipschitzDistiller through mmengine's Runner on the synthetic VOC data:
exact resume, DDP (gloo, 2 CPU processes) equivalence, student-only test."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner

import mmlckd  # noqa: F401
import rank_dump_hook  # noqa: F401  (registers RankDumpHook in-process)
from mmlckd.testing import det_model
from engine_toys import tiny_cfg
from tool_modules import REPO, TESTS, load_tool

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def _records(work_dir, rank=0):
    with open(osp.join(work_dir, f'rank{rank}.jsonl')) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_resume_continues_exactly(voc_devkit, teacher_ckpt, tmp_path):
    straight = tmp_path / 'straight'
    Runner.from_cfg(tiny_cfg(voc_devkit, straight, teacher_ckpt,
                             max_iters=3)).train()
    part = tmp_path / 'part'
    Runner.from_cfg(tiny_cfg(voc_devkit, part, teacher_ckpt,
                             max_iters=2)).train()
    ckpt = part / 'iter_2.pth'
    assert ckpt.is_file()
    state = torch.load(ckpt)['state_dict']
    assert not any(k.startswith('teacher') for k in state)
    assert any(k.startswith('connectors.') for k in state)
    assert (part / 'student_final.pth').is_file()
    assert (part / 'lipschitz.jsonl').is_file()

    cfg = tiny_cfg(voc_devkit, part, teacher_ckpt, max_iters=3)
    cfg.resume, cfg.load_from = True, str(ckpt)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 3
    want = _records(straight)[2]
    got = _records(part)[2]
    assert got['iter'] == want['iter'] == 3
    assert got['img_ids'] == want['img_ids']
    # the power-iteration vectors are checkpointed too, so the resumed step
    # is the same computation as the uninterrupted one
    for key in ('loss_cls', 'loss_bbox', 'loss_feat', 'loss_lipschitz',
                'sigma_s.backbone.2', 'sigma_t.backbone.0'):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert got['param_sum'] == pytest.approx(want['param_sum'], rel=1e-6)
    # sigma_ratio is in the outputs of the step its sigmas come from
    for rec in _records(straight):
        for i in range(3):
            s, t = rec[f'sigma_s.backbone.{i}'], rec[f'sigma_t.backbone.{i}']
            assert rec[f'sigma_ratio.backbone.{i}'] == pytest.approx(
                s / t, rel=1e-5)
    # the sigma history continues across the resume: 1, 2, then 3
    with open(part / 'lipschitz.jsonl') as f:
        assert [json.loads(line)['iter'] for line in f] == [1, 2, 3]

    # a fresh (not resumed) run in the same work dir replaces the history
    Runner.from_cfg(tiny_cfg(voc_devkit, part, teacher_ckpt,
                             max_iters=1)).train()
    with open(part / 'lipschitz.jsonl') as f:
        assert [json.loads(line)['iter'] for line in f] == [1]


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _dist_train(cfg, cfg_path, work_dir):
    """``tools/dist_train.sh cfg 2`` (gloo, one thread per rank); returns
    the dumped config path and the environment used."""
    cfg.dump(str(cfg_path))
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()),
               PYTHONPATH=TESTS + os.pathsep + REPO,
               OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), str(cfg_path),
         '2', '--work-dir', str(work_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cfg_path, env


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(voc_devkit, teacher_ckpt,
                                                    tmp_path):
    """2 ranks x batch 1 (gloo) vs single-process runs on each rank's
    sample: identical losses at iteration 1; after the synchronized step,
    identical parameters on both ranks."""
    ddp_dir = tmp_path / 'ddp'
    cfg = tiny_cfg(voc_devkit, ddp_dir, teacher_ckpt, max_iters=2,
                   batch_size=1, shuffle=False)
    cfg_path, env = _dist_train(cfg, tmp_path / 'ddp_cfg.py', ddp_dir)
    r0, r1 = _records(ddp_dir, 0), _records(ddp_dir, 1)
    assert len(r0) == len(r1) == 2
    assert r0[0]['img_ids'] != r1[0]['img_ids']  # each rank its own data
    # DDP kept the replicas identical after every step
    for a, b in zip(r0, r1):
        assert a['param_sum'] == pytest.approx(b['param_sum'], rel=1e-9)
    assert (ddp_dir / 'student_final.pth').is_file()

    # 2-process evaluation of the distillation checkpoint (student only):
    # both ranks' predictions are gathered into one VOCMetric result
    env['PORT'] = str(_free_port())
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'dist_test.sh'), str(cfg_path),
         str(ddp_dir / 'iter_2.pth'), '2', '--work-dir',
         str(tmp_path / 'ddp_eval')],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'pascal_voc/mAP' in proc.stdout + proc.stderr

    # single process, batch 1, on exactly the sample each rank saw first
    for rank, rec in ((0, r0[0]), (1, r1[0])):
        single = tmp_path / f'single{rank}'
        cfg = tiny_cfg(voc_devkit, single, teacher_ckpt, max_iters=1,
                       batch_size=1, shuffle=False)
        ids = rec['img_ids']
        with open(tmp_path / f'ids{rank}.txt', 'w') as f:
            f.write('\n'.join(ids) + '\n')
        cfg.train_dataloader.dataset.ann_file = str(tmp_path /
                                                    f'ids{rank}.txt')
        Runner.from_cfg(cfg).train()
        got = _records(single)[0]
        assert got['img_ids'] == ids
        for key in ('loss_cls', 'loss_bbox', 'loss_feat', 'loss_lipschitz',
                    'sigma_s.backbone.0', 'sigma_t.backbone.2'):
            assert got[key] == pytest.approx(rec[key], rel=1e-4), (rank, key)


@pytest.mark.slow
def test_ddp_ranks_fix_identical_balanced_weights(voc_devkit, teacher_ckpt,
                                                  tmp_path):
    """2 ranks on different samples, default (balanced) loss weights: the
    calibration statistics are averaged over the ranks, so both fix the
    same positive weights (without the all-reduce they would differ), and
    the replicas stay identical."""
    work = tmp_path / 'ddp_bal'
    cfg = tiny_cfg(voc_devkit, work, teacher_ckpt, max_iters=3,
                   batch_size=1, shuffle=False)
    cfg.model.lipschitz_loss = dict(type='mmlckd.LipschitzLoss')
    cfg.model.feature_loss = dict(type='mmlckd.OFDLoss')
    cfg.model.balance = dict(iters=2, log_interval=1)
    _dist_train(cfg, tmp_path / 'ddp_bal_cfg.py', work)
    r0, r1 = _records(work, 0), _records(work, 1)
    assert len(r0) == len(r1) == 3
    assert r0[0]['img_ids'] != r1[0]['img_ids']
    # the ranks' own gradient norms differ (different samples) ...
    assert r0[2]['gnorm_task'] != pytest.approx(r1[2]['gnorm_task'],
                                                rel=1e-3)
    # ... but the weights fixed after the calibration are the same
    for key in ('weight_lipschitz', 'weight_feat'):
        assert r0[1][key] == r1[1][key] == 0.0  # still calibrating
        assert r0[2][key] > 0
        assert r0[2][key] == pytest.approx(r1[2][key], rel=1e-6)
    assert r0[2]['param_sum'] == pytest.approx(r1[2]['param_sum'],
                                               rel=1e-9)


@pytest.mark.slow
def test_test_tool_runs_student_only(voc_devkit, teacher_ckpt, tmp_path):
    """tools/test.py on a distillation config + checkpoint: only the student
    is built (the teacher checkpoint may be gone), and VOCMetric runs."""
    work = tmp_path / 'run'
    Runner.from_cfg(tiny_cfg(voc_devkit, work, teacher_ckpt,
                             max_iters=2)).train()
    cfg = tiny_cfg(voc_devkit, work, teacher_ckpt + '.missing', max_iters=2)
    cfg_path = tmp_path / 'cfg.py'
    cfg.dump(str(cfg_path))
    metrics = load_tool('test').main([str(cfg_path), str(work / 'iter_2.pth'),
                                      '--work-dir', str(tmp_path / 'eval')])
    assert 'pascal_voc/mAP' in metrics
    # the exported student works with the plain student model too
    init_default_scope('mmdet')
    plain = MODELS.build(det_model('retinanet', base=16))
    state = torch.load(work / 'student_final.pth')['state_dict']
    plain.load_state_dict(state, strict=True)


@pytest.mark.slow
def test_teacher_sanity_check_fails_loudly_on_a_random_teacher(
        voc_devkit, teacher_ckpt, tmp_path):
    cfg = tiny_cfg(voc_devkit, tmp_path / 'chk', teacher_ckpt, max_iters=1)
    cfg.custom_hooks.append(
        dict(type='mmlckd.TeacherSanityCheckHook', min_score=0.05))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(RuntimeError, match='teacher scores pascal_voc/mAP'):
        runner.train()
    # nothing was trained, no checkpoint was written
    assert not (tmp_path / 'chk' / 'iter_1.pth').exists()
    # a threshold of zero lets the (random) teacher through
    cfg = tiny_cfg(voc_devkit, tmp_path / 'ok', teacher_ckpt, max_iters=1)
    cfg.custom_hooks.append(
        dict(type='mmlckd.TeacherSanityCheckHook', min_score=0.0))
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = [h for h in runner.hooks
            if type(h).__name__ == 'TeacherSanityCheckHook'][0]
    assert hook.result[0] == 'pascal_voc/mAP'


def test_train_tool_bad_resume_path(voc_devkit, teacher_ckpt, tmp_path,
                                    monkeypatch):
    cfg = tiny_cfg(voc_devkit, tmp_path / 'w', teacher_ckpt)
    cfg_path = tmp_path / 'cfg.py'
    cfg.dump(str(cfg_path))
    train_tool = load_tool('train')
    with pytest.raises(SystemExit, match='checkpoint not found.*nope'):
        train_tool.main([str(cfg_path), '--resume',
                         str(tmp_path / 'nope.pth')])
    # the CPU-machine message, checked on every machine (a GPU one too)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match='--amp needs a CUDA GPU'):
        train_tool.main([str(cfg_path), '--amp'])


@pytest.mark.slow
def test_train_tool_tears_down_its_process_group(voc_devkit, teacher_ckpt,
                                                 tmp_path, monkeypatch):
    """``--launcher pytorch`` on a CPU machine: gloo group, DDP wrapper, and
    the group destroyed at the end (a rank leaving with a live gloo group
    can die with SIGABRT at interpreter exit and fail the torchrun job)."""
    import torch.distributed as torch_dist
    cfg = tiny_cfg(voc_devkit, tmp_path / 'w', teacher_ckpt, max_iters=1)
    cfg.default_hooks.checkpoint.interval = 1
    cfg_path = tmp_path / 'cfg.py'
    cfg.dump(str(cfg_path))
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                           MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(key, value)
    train_tool = load_tool('train')
    try:
        runner = train_tool.main([str(cfg_path), '--launcher', 'pytorch'])
        assert type(runner.model).__name__ == (
            'MMDistributedDataParallel' if torch.cuda.is_available()
            else 'CPUAwareDistributedDataParallel')
        assert runner.iter == 1
        assert not torch_dist.is_initialized()
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = osp.join(root, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, folder)] = f.read()
    return out


@pytest.mark.slow
def test_test_tool_leaves_the_work_dir_as_it_was(voc_devkit, teacher_ckpt,
                                                 tmp_path, capfd):
    """tools/test.py in the training work dir: every file training left
    there (the config copy above all) is unchanged, the test run's config
    goes to its own timestamp folder, and the training copy still tests."""
    from mmengine.config import Config
    work = tmp_path / 'run'
    cfg_path = tmp_path / 'distill_tiny.py'
    tiny_cfg(voc_devkit, work, teacher_ckpt, max_iters=2).dump(str(cfg_path))
    Runner.from_cfg(Config.fromfile(str(cfg_path))).train()
    copy = work / 'distill_tiny.py'
    assert copy.is_file()
    before = _snapshot(work)
    capfd.readouterr()
    test = load_tool('test')
    metrics = test.main([str(cfg_path), str(work / 'iter_2.pth'),
                         '--work-dir', str(work)])
    assert 'pascal_voc/mAP' in metrics
    after = _snapshot(work)
    changed = [p for p in before if after.get(p) != before[p]]
    assert changed == []
    new = sorted(set(after) - set(before))
    # the test run's config is kept, in its own log folder
    dumped = [p for p in new if osp.basename(p) == 'distill_tiny.py']
    assert len(dumped) == 1 and osp.dirname(dumped[0]) != ''
    assert 'LipschitzDistiller' not in after[dumped[0]].decode()
    # the student's weights only: no "unexpected key" lines for the
    # connectors, balancer and estimator states of the checkpoint
    log = [p for p in new if p.endswith('.log')]
    assert len(log) == 1
    assert 'Load checkpoint from' in after[log[0]].decode()
    printed = ''.join(capfd.readouterr())
    assert 'unexpected key' not in printed and 'do not match' not in printed
    # the training copy is still a distillation config that tests again
    assert 'LipschitzDistiller' in copy.read_text()
    again = test.main([str(copy), str(work / 'iter_2.pth'),
                       '--work-dir', str(tmp_path / 'eval2')])
    assert again['pascal_voc/mAP'] == metrics['pascal_voc/mAP']


def _train_lines(work_dir):
    """The ``Iter(train)`` lines of the run's log file."""
    logs = [osp.join(r, f) for r, _, fs in os.walk(work_dir) for f in fs
            if f.endswith('.log')]
    assert len(logs) == 1, logs
    with open(logs[0]) as f:
        return [line for line in f if 'Iter(train)' in line]


@pytest.mark.slow
def test_gradient_shares_are_logged_only_when_measured(voc_devkit,
                                                       teacher_ckpt,
                                                       tmp_path):
    """Balanced weights, calibration of 2 steps, shares every 2 steps,
    a line every step, the history every 3: the shares appear on the lines
    and in the history of iteration 4 only (not in the calibration, not
    repeated on lines 3 and 5), the weights print as %.3e."""
    work = tmp_path / 'shares'
    cfg = tiny_cfg(voc_devkit, work, teacher_ckpt, max_iters=5)
    cfg.model.lipschitz_loss = dict(type='mmlckd.LipschitzLoss')
    cfg.model.feature_loss = dict(type='mmlckd.OFDLoss')
    cfg.model.balance = dict(iters=2, log_interval=2)
    for hook in cfg.custom_hooks:
        if hook['type'] == 'mmlckd.LipschitzMonitorHook':
            hook['interval'] = 3
    Runner.from_cfg(cfg).train()
    lines = _train_lines(work)
    assert len(lines) == 5
    assert ['gshare_task' in line for line in lines] == [
        False, False, False, True, False]
    with open(work / 'lipschitz.jsonl') as f:
        recs = [json.loads(line) for line in f]
    assert [r['iter'] for r in recs] == [3, 4]
    assert 'gshare_task' not in recs[0]
    total = sum(v for k, v in recs[1].items() if k.startswith('gshare_'))
    assert total == pytest.approx(1.0, rel=1e-5)
    assert recs[1]['gshare_lipschitz'] > 0 and recs[1]['gshare_feat'] > 0
    assert recs[0]['epoch'] == 1  # as the console counts
    # every weight at 4 significant digits in %.3e: nothing rounds to 0.0001
    import re
    for rec, line in ((recs[0], lines[2]), (recs[1], lines[3])):
        for key in ('weight_lipschitz', 'weight_feat'):
            assert f'{key}: {rec[key]:.3e}' in line, (key, line)
    assert 'weight_feat: 0.000e+00' in lines[0]
    assert not re.search(r'weight_\w+: \d\.\d{4}\b', ''.join(lines))
