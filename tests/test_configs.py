"""The recipes in ``configs/``.

* every config loads from any working directory; the VOC recipes train and
  test on the VOC splits of their references, distillation recipes name a
  teacher config of ``configs/baselines/`` relative to their own file and a
  checkpoint under ``work_dirs/<teacher config>/``, their student is the
  baseline student's model, their weights follow the documented derivation,
  and the OFD-only ablations differ from their LONDON config in
  ``lipschitz_loss`` alone;
* ``configs/london/metafile.yml`` lists every recipe, with existing
  teacher/student configs, and the CHANGELOG maps every removed config path
  to an existing one;
* every config's model builds offline (random init, random teacher) through
  :func:`mmlckd.testing.tiny_voc_cfg`;
* one representative distillation config per family (detection: Faster
  R-CNN; segmentation: DeepLabV3+ R-18 with the six OFD features) trains 2
  iterations and evaluates on the synthetic VOC through ``tools/train.py``;
* ``tools/dist_train.sh`` trains the RetinaNet recipe with 2 CPU processes.

Only the representatives train (the other distillation configs share their
code path: same distiller, hooks and data; the recipes differ in model
definitions, which the build test covers, including the distiller's probe
forward through the recorded layers of both nets).
"""
import glob
import json
import math
import os
import os.path as osp
import re
import socket
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import mmlckd  # noqa: F401
from mmlckd.checkpoint import safe_torch_load
from mmlckd.testing import tiny_model_cfg, tiny_voc_cfg
from tool_modules import REPO, load_tool

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')

ALL_CONFIGS = sorted(
    osp.relpath(p, REPO)
    for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'),
                       recursive=True)
    if '_base_' not in p.split(os.sep))
VOC_RECIPES = [c for c in ALL_CONFIGS
               if c.split('/')[1] in ('london', 'baselines')]
DISTILL_RECIPES = [c for c in ALL_CONFIGS if c.split('/')[1] == 'london']
TRAINED = {
    'detection': 'configs/london/'
    'london_faster-rcnn_r101_r18_fpn_8xb2-1x_voc0712.py',
    'segmentation': 'configs/london/'
    'london_deeplabv3plus_r101-d8_r18-d8_4xb4-40k_voc12aug-512x512.py',
}
DIST_CONFIG = ('configs/london/'
               'london_retinanet_r101_r18_fpn_8xb2-1x_voc0712.py')
METAFILE = osp.join(REPO, 'configs', 'london', 'metafile.yml')
HOOKS = ('mmlckd.LipschitzMonitorHook', 'mmlckd.StudentExportHook',
         'mmlckd.TeacherSanityCheckHook', 'mmlckd.DistillWeightHook')


@pytest.fixture(autouse=True)
def _elsewhere(monkeypatch, tmp_path):
    """Every test runs from a folder outside the repository: the configs
    must not depend on the working directory."""
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(min(2, torch.get_num_threads()))


def load(path) -> Config:
    return Config.fromfile(osp.join(REPO, path))


def build(model_cfg, scope):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with DefaultScope.overwrite_default_scope(scope):
            return MODELS.build(model_cfg)


def is_distiller(cfg) -> bool:
    return 'LipschitzDistiller' in str(cfg.model.get('type', ''))


def test_recipe_set_is_complete():
    names = {osp.basename(c)[:-3] for c in VOC_RECIPES}
    for arch in ('faster-rcnn', 'retinanet'):
        assert {f'{arch}_r101_fpn_8xb2-1x_voc0712',
                f'{arch}_r18_fpn_8xb2-1x_voc0712',
                f'london_{arch}_r101_r18_fpn_8xb2-1x_voc0712',
                f'ofd_{arch}_r101_r18_fpn_8xb2-1x_voc0712'} <= names
    seg = '4xb4-40k_voc12aug-512x512'
    assert {f'deeplabv3plus_r101-d8_{seg}', f'deeplabv3plus_r18-d8_{seg}',
            f'mobilenet-v2-d8_deeplabv3plus_{seg}'} <= names
    for student in ('r18-d8', 'mobilenet-v2-d8'):
        for method in ('london', 'ofd'):
            assert f'{method}_deeplabv3plus_r101-d8_{student}_{seg}' in names
    assert set(TRAINED.values()) | {DIST_CONFIG} <= set(VOC_RECIPES)


def test_metafile_lists_every_recipe():
    meta = yaml.safe_load(open(METAFILE))
    collections = {c['Name'] for c in meta['Collections']}
    models = meta['Models']
    assert sorted(m['Config'] for m in models) == DISTILL_RECIPES
    for m in models:
        assert m['In Collection'] in collections, m['Name']
        assert m['Name'] == osp.splitext(osp.basename(m['Config']))[0]
        assert m['In Collection'] == (
            'OFD' if m['Name'].startswith('ofd_') else 'LONDON')
        assert 'Results' not in m, 'no measured result yet'
        cfg = load(m['Config'])
        teacher = m['Metadata']['Teacher']['Config']
        student = m['Metadata']['Student']['Config']
        assert osp.normpath(cfg.model.teacher.config) == \
            osp.join(REPO, teacher)
        assert cfg.model.student == load(student).model, m['Name']
        gpus, per_gpu = re.fullmatch(
            r'(\d+) GPUs x (\d+) images',
            m['Metadata']['Training Resources']).groups()
        assert int(per_gpu) == cfg.train_dataloader.batch_size
        assert f'_{gpus}xb{per_gpu}-' in m['Name']


def test_changelog_maps_every_moved_config():
    """Old paths (configs/detection, configs/segmentation) are gone; the
    CHANGELOG names each with its existing replacement."""
    text = open(osp.join(REPO, 'CHANGELOG.md'), encoding='utf-8').read()
    moves = dict(re.findall(
        r'`(configs/(?:detection|segmentation)/[^`]+\.py)` +-> +'
        r'`(configs/[^`]+\.py)`', text))
    assert sorted(moves.values()) == VOC_RECIPES
    for old, new in moves.items():
        assert not osp.exists(osp.join(REPO, old)), old
        assert osp.basename(old) == osp.basename(new)


@pytest.mark.parametrize('path', ALL_CONFIGS)
def test_config_parses(path):
    cfg = load(path)
    assert cfg.get('default_scope') in ('mmdet', 'mmseg')
    if path not in VOC_RECIPES:
        return
    train = cfg.train_dataloader.dataset
    if cfg.default_scope == 'mmdet':  # VOC07+12 trainval, VOC07 test
        subsets = [d.ann_file for d in train.dataset.datasets]
        assert subsets == ['VOC2007/ImageSets/Main/trainval.txt',
                           'VOC2012/ImageSets/Main/trainval.txt']
        assert cfg.val_dataloader.dataset.ann_file == \
            'VOC2007/ImageSets/Main/test.txt'
        assert cfg.val_evaluator.type == 'VOCMetric'
    else:  # VOC12 train + aug, VOC12 val
        assert [d.ann_file for d in train.datasets] == [
            'ImageSets/Segmentation/train.txt',
            'ImageSets/Segmentation/aug.txt']
        assert cfg.val_evaluator.type == 'IoUMetric'
        assert cfg.model.get('student', cfg.model).decode_head.num_classes \
            == 21
    if not is_distiller(cfg):
        return

    # distillation recipes: mmlckd found through the type prefix alone
    assert 'custom_imports' not in cfg
    extra = {'mmlckd.ConnectorWarmupHook'} if 'voc12aug' in path else set()
    assert {h.type for h in cfg.custom_hooks} == set(HOOKS) | extra
    teacher = cfg.model.teacher
    # {{ fileDirname }}: an absolute path, whatever the working directory
    assert osp.isabs(teacher.config) and osp.isfile(teacher.config)
    assert osp.dirname(osp.normpath(teacher.config)) == \
        osp.join(REPO, 'configs', 'baselines')
    stem = osp.splitext(osp.basename(teacher.config))[0]
    assert teacher.checkpoint.startswith(f'work_dirs/{stem}/')
    tcfg = Config.fromfile(teacher.config)
    assert tcfg.default_scope == cfg.default_scope
    assert tcfg.model.backbone.depth == 101
    assert tcfg.model.get('data_preprocessor') == \
        cfg.model.student.get('data_preprocessor')
    # the student is the baseline student config's model, unchanged
    baseline = osp.join('configs', 'baselines', _student_baseline(path))
    assert cfg.model.student == load(baseline).model
    feat = cfg.model.feature_loss
    assert feat.type == 'mmlckd.OFDLoss' and feat.loss_weight == 1e-5
    if cfg.default_scope == 'mmseg':
        assert list(feat.feat_weights) == [1 / 8, 1 / 4, 1 / 2, 1, 1, 1 / 16]
        assert len(cfg.model.features) == 6
        assert [f.group for f in cfg.model.features] == \
            ['backbone'] * 4 + [None, None]
    else:
        assert cfg.model.features == 'backbone'
    if osp.basename(path).startswith('london_'):
        # the reference's alpha * loss.sum() / B / 1e4 (alpha = 2000, summed
        # over G replicas, B = G * b) is alpha / (b * 1e4) per DDP rank
        per_gpu = cfg.train_dataloader.batch_size
        assert cfg.model.lipschitz_loss == dict(
            type='mmlckd.LipschitzLoss', loss_weight=2000 / (per_gpu * 1e4))
    else:  # OFD-only ablation == its LONDON config minus the Lipschitz term
        assert cfg.model.lipschitz_loss is None
        london = load(path.replace('/ofd_', '/london_'))
        a, b = cfg.to_dict(), london.to_dict()
        a['model'].pop('lipschitz_loss')
        b['model'].pop('lipschitz_loss')
        assert a == b


@pytest.mark.parametrize('path', ALL_CONFIGS)
def test_train_tool_rewrites_nothing_in_a_recipe(path):
    """Every config of configs/ carries what tools/train.py would add (the
    README's "What tools/train.py adds to mmdet's and mmseg's train.py"),
    so mmdet's and mmseg's own train.py run it the same way: the tool's
    config rewrites change nothing and log nothing."""
    from mmlckd.cli.train_cfg import complete_train_cfg
    cfg = load(path)
    before = cfg.to_dict()
    assert complete_train_cfg(cfg) == []
    assert cfg.to_dict() == before


# the recipes and the demo's distilled students (is_distiller checks it)
DISTILL_CONFIGS = [c for c in ALL_CONFIGS if c.split('/')[1] == 'london'
                   or osp.basename(c).endswith('_london.py')]


@pytest.mark.parametrize('path', DISTILL_CONFIGS)
def test_dumped_config_holds_the_model_once(path, tmp_path):
    """The printed / dumped config (what the work dir keeps) holds the
    student's model once, inside ``model``: no top-level helper variable
    (``student = _base_.model``) repeats it (issue 19, item 11)."""
    cfg = load(path)
    assert is_distiller(cfg)
    student = cfg.model.student.to_dict()
    copies = [k for k, v in cfg.to_dict().items()
              if k != 'model' and v == student]
    assert copies == []
    out = tmp_path / 'dumped.py'
    cfg.dump(str(out))
    dumped = Config.fromfile(str(out))
    assert dumped.model.student == cfg.model.student


def _student_baseline(path):
    """The baseline student config a distillation recipe is built on."""
    name = osp.basename(path)
    if 'faster-rcnn' in name:
        return 'faster-rcnn_r18_fpn_8xb2-1x_voc0712.py'
    if 'retinanet' in name:
        return 'retinanet_r18_fpn_8xb2-1x_voc0712.py'
    if 'mobilenet' in name:
        return 'mobilenet-v2-d8_deeplabv3plus_4xb4-40k_voc12aug-512x512.py'
    return 'deeplabv3plus_r18-d8_4xb4-40k_voc12aug-512x512.py'


def test_r18_students_use_imagenet_r18():
    for arch in ('faster-rcnn', 'retinanet'):
        m = load(f'configs/baselines/{arch}_r18_fpn_8xb2-1x_voc0712.py')
        m = m.model
        assert m.backbone.depth == 18
        assert m.backbone.init_cfg == dict(
            type='Pretrained', checkpoint='torchvision://resnet18')
        assert m.neck.in_channels == [64, 128, 256, 512]
        t = load(f'configs/baselines/{arch}_r101_fpn_8xb2-1x_voc0712.py')
        assert t.model.backbone.init_cfg.checkpoint == \
            'torchvision://resnet101'
    seg = load('configs/baselines/'
               'deeplabv3plus_r18-d8_4xb4-40k_voc12aug-512x512.py').model
    assert seg.backbone.depth == 18
    assert seg.pretrained == 'open-mmlab://resnet18_v1c'


def test_tiny_voc_cfg_removes_downloads_and_syncbn(voc_root):
    cfg = load(TRAINED['segmentation'])
    tiny_voc_cfg(cfg, data_root=voc_root, img_scale=(64, 48))
    text = cfg.pretty_text
    for bad in ('open-mmlab://', 'torchvision://', 'mmcls://', 'SyncBN',
                'data/VOCdevkit'):
        assert bad not in text, bad
    teacher = cfg.model.teacher
    assert isinstance(teacher.config, dict) and teacher.checkpoint is None
    assert teacher.config['model']['data_preprocessor']['size'] == (48, 64)
    assert cfg.model.student.data_preprocessor.size == (48, 64)
    assert cfg.model.probe_input_size == (48, 64)
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=2,
                                 val_interval=2)
    train = cfg.train_dataloader
    assert train.num_workers == 0 and not train.persistent_workers
    for ds in train.dataset.datasets:
        assert ds.data_root == osp.join(voc_root, 'VOCdevkit', 'VOC2012')
        crop = [t for t in ds.pipeline if t.type == 'RandomCrop'][0]
        assert crop.crop_size == (48, 64)
    hooks = {h.type: h for h in cfg.custom_hooks}
    assert hooks['mmlckd.ConnectorWarmupHook'].iters == 1
    assert hooks['mmlckd.TeacherSanityCheckHook'].min_score == 0.0
    # detection: RepeatDataset x1 over the VOC2007 + VOC2012 concat
    det = tiny_voc_cfg(load(DIST_CONFIG), data_root=voc_root)
    assert det.train_dataloader.dataset.times == 1
    roots = [d.data_root for d in
             det.train_dataloader.dataset.dataset.datasets]
    assert roots == [osp.join(voc_root, 'VOCdevkit') + '/'] * 2
    assert det.param_scheduler is None  # the stock one is epoch-based


@pytest.mark.parametrize(
    'path', [c for c in ALL_CONFIGS if c not in TRAINED.values()])
def test_config_builds(path):
    cfg = load(path)
    if 'model' not in cfg:  # a shared runtime file (e.g. configs/demo)
        pytest.skip('no model in this config')
    tiny_model_cfg(cfg.model, size_hw=(64, 64))
    model = build(cfg.model, cfg.default_scope)
    if not is_distiller(cfg) or path not in VOC_RECIPES:
        return
    n = len(model.pairs)
    assert n == (6 if cfg.default_scope == 'mmseg' else 4)
    assert len(model.connectors) == n
    assert (model.lipschitz_loss is None) == osp.basename(path).startswith(
        'ofd_')
    assert 'teacher.' not in ''.join(model.state_dict())


def _finite(record, key):
    assert key in record, f'{key} missing from {sorted(record)}'
    assert math.isfinite(record[key]), (key, record[key])


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(TRAINED))
def test_distill_recipe_trains_and_evaluates(family, voc_root, tmp_path):
    path = TRAINED[family]
    cfg = load(path)
    work_dir = str(tmp_path / 'work')
    tiny_voc_cfg(cfg, data_root=voc_root, work_dir=work_dir)
    tiny = str(tmp_path / 'tiny.py')
    cfg.dump(tiny)
    runner = load_tool('train').main([tiny])

    # losses and sigmas of both iterations (LipschitzMonitorHook)
    with open(osp.join(work_dir, 'lipschitz.jsonl')) as f:
        records = [json.loads(line) for line in f]
    assert [r['iter'] for r in records] == [1, 2]
    for r in records:
        for key in ('loss', 'loss_feat', 'loss_lipschitz'):
            _finite(r, key)
        for i in range(3):  # 4 backbone stages -> 3 blocks
            _finite(r, f'sigma_s.backbone.{i}')
            _finite(r, f'sigma_t.backbone.{i}')
        assert not any(k.startswith('sigma_s.') and 'backbone' not in k
                       for k in r), 'aspp/decoder are OFD-only'
    # warm-ups shortened to max_iters // 2 = 1 iteration
    if family == 'detection':  # weight warm-up: off, then fully on
        assert records[0]['loss_feat'] == 0 and records[1]['loss_feat'] > 0
        assert [r['distill_weight'] for r in records] == [0.0, 1.0]
    else:  # connector warm-up: the losses reach the student from iter 2
        assert records[0]['loss_feat'] > 0 and records[1]['loss_feat'] > 0
        assert [r['distill_to_student'] for r in records] == [False, True]
    assert records[1]['loss_lipschitz'] > 0

    # the teacher check ran (and accepted the random teacher: min_score 0)
    check = [h for h in runner.hooks
             if type(h).__name__ == 'TeacherSanityCheckHook']
    assert check and check[0].result is not None

    # validation metric of the final evaluation
    key = 'val/pascal_voc/mAP' if family == 'detection' else 'val/mIoU'
    assert key in runner.message_hub.log_scalars, sorted(
        runner.message_hub.log_scalars)

    # checkpoint: student + connectors, never the teacher
    ckpt = safe_torch_load(osp.join(work_dir, 'iter_2.pth'),
                           map_location='cpu')
    keys = list(ckpt['state_dict'])
    assert not any(k.startswith('teacher.') for k in keys)
    assert any(k.startswith('student.') for k in keys)
    assert any(k.startswith('connectors.') for k in keys)

    # exported student loads into the plain student model, exactly
    exported = safe_torch_load(osp.join(work_dir, 'student_final.pth'),
                               map_location='cpu')
    student = build(cfg.model.student, cfg.default_scope)
    missing, unexpected = student.load_state_dict(exported['state_dict'],
                                                  strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])

    if family == 'detection':
        # tools/test.py evaluates the distillation checkpoint, student only
        metrics = load_tool('test').main(
            [tiny, osp.join(work_dir, 'iter_2.pth'), '--work-dir',
             str(tmp_path / 'test')])
        assert 'pascal_voc/mAP' in metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dist_train_sh_two_cpu_processes(voc_root, tmp_path):
    cfg = tiny_voc_cfg(load(DIST_CONFIG), data_root=voc_root)
    tiny = str(tmp_path / 'tiny.py')
    cfg.dump(tiny)
    work_dir = tmp_path / 'work'
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()),
               OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', tiny, '2', '--work-dir',
         str(work_dir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:]
    logs = glob.glob(str(work_dir / '*' / '*.log'))
    assert logs, proc.stdout[-2000:]
    log = open(logs[0]).read()
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert 'Iter(train) [2/2]' in log and 'pascal_voc/mAP' in log
    assert (work_dir / 'iter_2.pth').is_file()
    assert (work_dir / 'student_final.pth').is_file()
