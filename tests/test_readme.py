"""The README's commands and configs work as written: the "Distill your
own model" snippet, and "From zero to a distilled detector" end to end."""
import glob
import os
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

README = osp.join(osp.dirname(__file__), '..', 'README.md')


def readme_snippet() -> str:
    text = open(README, encoding='utf-8').read()
    m = re.search(
        r'<!-- README-SNIPPET-START -->\s*```python\n(.*?)```\s*'
        r'<!-- README-SNIPPET-END -->', text, re.S)
    assert m, 'README snippet markers not found'
    return m.group(1)


def test_readme_commands_are_the_ci_commands():
    text = open(README, encoding='utf-8').read()
    block = re.search(r'## The two commands.*?```bash\n(.*?)```', text, re.S)
    cmds = [ln.split('#')[0].strip() for ln in block.group(1).splitlines()
            if ln.strip()]
    assert cmds == ['make demo', 'make test']
    ci = open(osp.join(osp.dirname(README), '.ci', 'run')).read()
    assert '\nmake test\n' in ci


@pytest.mark.filterwarnings('ignore::UserWarning')
def test_readme_snippet_builds(tmp_path):
    path = tmp_path / 'distill_cfg.py'
    path.write_text(readme_snippet())
    cfg = Config.fromfile(str(path))
    assert cfg.model.type == 'mmlckd.LipschitzDistiller'
    assert cfg.model.student.type == 'RetinaNet'
    assert cfg.model.student.backbone.depth == 18
    assert cfg.default_scope == 'mmdet'  # untouched
    init_default_scope(cfg.default_scope)
    model_cfg = cfg.model.copy()
    model_cfg.student.backbone.init_cfg = None
    # the snippet's teacher checkpoint does not exist here: a clear error
    with pytest.raises(FileNotFoundError, match='epoch_4.pth'):
        MODELS.build(model_cfg)
    model_cfg.teacher.checkpoint = None
    model_cfg.probe_input_size = (64, 64)
    model = MODELS.build(model_cfg)
    # defaults: the 4 backbone stages of both nets (R18 student, R50 teacher)
    assert len(model.pairs) == 4
    assert model.pairs[0].student.path == 'backbone.layer1.1.relu'
    assert model.pairs[0].teacher.path == 'backbone.layer1.2.relu'
    assert model.pairs[3].teacher_bn == 'backbone.layer4.2.bn3'
    assert model.connectors[3].conv.in_channels == 512
    assert model.connectors[3].conv.out_channels == 2048
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        out = model(x, None, mode='tensor')
    assert isinstance(out, tuple)


# ------------------------------------------- "From zero to a distilled ..."
ZERO_BLOCK = re.compile(
    r'<!-- ZERO-TO-DISTILLED (det|seg) (\S+) -->\s*```(?:python|bash)\n'
    r'(.*?)```', re.S)


def zero_to_distilled(task: str):
    """The section's config files (name -> text) and commands (argv lists)
    of ``task`` ('det' or 'seg'), as a user copies them."""
    text = open(README, encoding='utf-8').read()
    files, commands = {}, []
    for kind, name, body in ZERO_BLOCK.findall(text):
        if kind != task:
            continue
        if name != 'commands':
            files[name] = body
            continue
        for line in body.replace('\\\n', ' ').splitlines():
            line = line.split('#')[0].strip()
            if line:
                commands.append(line.split())
    return files, commands


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_zero_to_distilled_section_is_complete(task, tmp_path):
    """Fast: the section has a config and the whole road (teacher on a
    stock config, distil, test, export, test the export, plot), and its
    config loads as a distiller of that stock config's student."""
    files, commands = zero_to_distilled(task)
    assert len(files) == 1 and commands
    (name, body), = files.items()
    tools = [c[1] for c in commands]
    assert all(c[0] == 'python' for c in commands)
    assert tools == ['tools/train.py', 'tools/train.py', 'tools/test.py',
                     'tools/export_student.py', 'tools/test.py',
                     'tools/plot_run.py']
    stock = commands[0][2]
    assert stock.startswith('mmdet::' if task == 'det' else 'mmseg::')
    assert commands[1][2] == name and commands[2][2] == name
    path = tmp_path / name
    path.write_text(body)
    cfg = Config.fromfile(str(path))
    assert cfg.model.type == 'mmlckd.LipschitzDistiller'
    assert cfg.model.teacher.config == stock
    # the teacher checkpoint is in the default work dir of the teacher run
    stem = osp.splitext(osp.basename(stock))[0]
    assert cfg.model.teacher.checkpoint.startswith(f'work_dirs/{stem}/')
    assert cfg.model.student.backbone.depth == 18
    # the model is written once (no top-level copy of the student)
    assert [k for k in cfg if k != 'model'
            and cfg[k] == cfg.model.student] == []
    # the plain config the section names for stock tools is this student
    text = open(README, encoding='utf-8').read()
    section = text[text.index('## From zero to a distilled detector'):
                   text.index('### Reading the training log')]
    baseline = {'det': 'configs/baselines/retinanet_r18_fpn_8xb2-1x_voc0712.py',
                'seg': 'configs/baselines/'
                'deeplabv3plus_r18-d8_4xb4-40k_voc12aug-512x512.py'}[task]
    assert f'`{baseline}`' in section
    plain = Config.fromfile(osp.join(osp.dirname(README), baseline))
    assert plain.model == cfg.model.student


# What the end-to-end test adds to the section's commands: a synthetic VOC
# with a handful of images, small images, a few iterations, no downloads
# (no ImageNet init), one process. Nothing else differs.
_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
_ONE_PROCESS = [f'{d}.{k}' for d in _LOADERS
                for k in ('num_workers=0', 'persistent_workers=False')]
SMALL_RUN = {
    'det': dict(
        voc=dict(num_trainval_07=1, num_test_07=1, num_trainval_12=1,
                 num_val_12=1, img_size=96, max_objects=2),
        train=_ONE_PROCESS + [
            'train_dataloader.batch_size=2', 'train_dataloader.dataset.times=1',
            'train_cfg.val_interval=4', 'default_hooks.logger.interval=1',
            'default_hooks.checkpoint.max_keep_ckpts=1'] + [
            f'train_dataloader.dataset.dataset.datasets.{i}.pipeline.2.'
            'scale=(64,64)' for i in (0, 1)] + [
            f'{d}.dataset.pipeline.1.scale=(64,64)'
            for d in ('val_dataloader', 'test_dataloader')],
        teacher=['model.backbone.init_cfg=None'],
        student=['model.student.backbone.init_cfg=None',
                 'model.balance.iters=2'],
        test=_ONE_PROCESS[2:] + ['test_dataloader.dataset.pipeline.1.'
                                 'scale=(64,64)'],
        metric='pascal_voc/mAP', checkpoints={}),
    'seg': dict(
        # VOC2012 segmentation: 2 train, 2 aug-only, 1 val
        voc=dict(num_trainval_07=1, num_test_07=1, num_trainval_12=5,
                 num_val_12=1, num_aug_extra_12=2, img_size=64,
                 max_objects=2),
        train=_ONE_PROCESS + [
            'train_dataloader.batch_size=2', 'train_cfg.max_iters=3',
            'train_cfg.val_interval=3', 'default_hooks.logger.interval=1',
            'default_hooks.checkpoint.interval=3'] + [
            f'train_dataloader.dataset.datasets.{i}.pipeline.{k}'
            for i in (0, 1) for k in ('2.scale=(128,64)',
                                      '3.crop_size=(64,64)',
                                      '6.size=(64,64)')] + [
            f'{d}.dataset.pipeline.1.scale=(128,64)'
            for d in ('val_dataloader', 'test_dataloader')],
        teacher=['model.pretrained=None', 'model.data_preprocessor.size=(64,64)'],
        student=['model.student.pretrained=None',
                 'model.student.data_preprocessor.size=(64,64)',
                 'model.balance.iters=2'],
        test=_ONE_PROCESS[2:] + ['test_dataloader.dataset.pipeline.1.'
                                 'scale=(128,64)'],
        metric='mIoU',
        # the 20k-iteration schedule's last checkpoint is the 3-iteration
        # run's iter_3.pth
        checkpoints={'iter_20000.pth': 'iter_3.pth'}),
}


def _next_second():
    """mmengine names a Runner's logger after the second it started in."""
    import time
    time.sleep(1.05 - time.time() % 1)


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore')
@pytest.mark.parametrize('task', ['det', 'seg'])
def test_zero_to_distilled_on_synthetic_voc(task, tmp_path, monkeypatch):
    """The section end to end, its commands as written (tools/ of this
    checkout, run in-process, from a folder holding data/), on a synthetic
    VOC with the small-run options above appended: a trained teacher, a
    distillation run, the test metric of its checkpoint, an exported
    student that tests the same, the plot."""
    from mmlckd.testing import make_synthetic_voc
    from tool_modules import load_tool
    small = SMALL_RUN[task]
    files, commands = zero_to_distilled(task)
    monkeypatch.chdir(tmp_path)
    make_synthetic_voc('data', seed=0, **small['voc'])

    def ours(arg):
        for old, new in small['checkpoints'].items():
            arg = arg.replace(old, new)
        return arg

    for name, body in files.items():
        (tmp_path / name).write_text(ours(body))
    results = []
    for i, (_, tool, *args) in enumerate(commands):
        args = [ours(a) for a in args]
        name = osp.splitext(osp.basename(tool))[0]
        if name == 'train':
            args += ['--cfg-options'] + small['train'] + (
                small['teacher'] if i == 0 else small['student'])
        elif name == 'test':
            args += ['--cfg-options'] + small['test']
        _next_second()
        results.append(load_tool(name).main(args))

    teacher_dir = osp.join('work_dirs', osp.splitext(
        osp.basename(commands[0][2]))[0])
    distill_dir = osp.join('work_dirs', osp.splitext(commands[1][2])[0])
    # the distiller loaded the teacher the first command trained
    # the first log of the work dir is the training run's (then the tests')
    log = open(sorted(glob.glob(osp.join(distill_dir, '*', '*.log')))[0]).read()
    assert f'teacher checkpoint loaded from {teacher_dir}/' in log
    assert 'distillation: ' in log and 'loss balance: weights fixed' in log
    # short train lines: no per-pair sigmas, weights in %.3e
    lines = [ln for ln in log.splitlines() if '(train)' in ln]
    assert lines and not any('sigma_' in ln for ln in lines)
    assert all(re.search(r'weight_preds: \d\.\d{3}e[+-]\d\d', ln)
               for ln in lines)
    assert osp.isfile(osp.join(distill_dir, 'lipschitz.jsonl'))
    assert osp.isfile(osp.join(distill_dir, 'student_final.pth'))
    # the test metric of the full checkpoint and of the exported student
    full, exported = results[2], results[4]
    assert small['metric'] in full and 0 <= full[small['metric']] <= 100
    assert exported[small['metric']] == pytest.approx(full[small['metric']])
    out = commands[3][3]
    state = torch.load(out, map_location='cpu', weights_only=True)
    state = state.get('state_dict', state)
    assert state and not any(k.startswith(('student.', 'connectors.'))
                             for k in state)
    assert osp.isfile(results[5]) and os.path.getsize(results[5]) > 0
