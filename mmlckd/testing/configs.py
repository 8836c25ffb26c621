"""Config shrinking: full-size recipes (``configs/``) into configs that
build offline and train a few iterations on a CPU.

Every function edits a config (or a model config dict) *in place* and
returns it. The steps compose; :func:`tiny_voc_cfg` applies them all for a
smoke run of a VOC recipe::

    from mmengine.config import Config
    from mmlckd.testing import tiny_voc_cfg

    cfg = Config.fromfile('configs/london/london_faster-rcnn_r101_r18_fpn_8xb2-1x_voc0712.py')
    tiny_voc_cfg(cfg, data_root='/tmp/voc', work_dir='/tmp/wd')
    cfg.dump('/tmp/tiny.py')   # usable by tools/train.py, tools/dist_train.sh

Model steps: :func:`tiny_model_cfg` (random init, BN, fixed input size,
a distiller's teacher inlined) and :func:`narrow_model_cfg` (narrow
ResNet widths, same architecture). Run steps: :func:`set_voc_data_root`,
:func:`single_process_loaders`, :func:`iter_schedule`,
:func:`drop_validation`.
"""
import copy
import os.path as osp
from typing import Any, Optional, Sequence, Tuple

from mmengine.config import Config, ConfigDict

from mmlckd.utils import load_config

__all__ = [
    'strip_pretrained', 'sync_bn_to_bn', 'narrow_model_cfg',
    'tiny_model_cfg', 'set_voc_data_root',
    'single_process_loaders', 'iter_schedule', 'drop_validation',
    'tiny_voc_cfg', 'DISTILLER_TYPES'
]

DISTILLER_TYPES = ('LipschitzDistiller', 'mmlckd.LipschitzDistiller')
_SYNC_BN = ('SyncBN', 'MMSyncBN', 'SyncBatchNorm', 'NaiveSyncBN')
_PRETRAINED = ('Pretrained', 'PretrainedInit')


def _walk(obj: Any, fn) -> None:
    """Call ``fn(d)`` on every dict nested in ``obj`` (dicts and lists)."""
    if isinstance(obj, dict):
        fn(obj)
        for v in list(obj.values()):
            _walk(v, fn)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, fn)


def strip_pretrained(cfg: Any) -> Any:
    """In place: no pretrained weights anywhere in a (model) config.

    ``init_cfg`` entries of type ``Pretrained`` (alone or in a list) become
    ``None`` and every ``pretrained='...'`` key (mmseg's
    ``EncoderDecoder.pretrained``, old-style backbones) becomes ``None``.
    Returns ``cfg``.
    """

    def fn(d):
        init = d.get('init_cfg', None)
        if isinstance(init, dict) and init.get('type') in _PRETRAINED:
            d['init_cfg'] = None
        elif isinstance(init, (list, tuple)):
            kept = [i for i in init if not (isinstance(i, dict) and i.get(
                'type') in _PRETRAINED)]
            d['init_cfg'] = kept or None
        if isinstance(d.get('pretrained', None), str):
            d['pretrained'] = None

    _walk(cfg, fn)
    return cfg


def sync_bn_to_bn(cfg: Any) -> Any:
    """In place: every SyncBN norm config becomes plain ``BN`` (SyncBN needs
    CUDA and a process group). Returns ``cfg``."""

    def fn(d):
        if d.get('type', None) in _SYNC_BN:
            d['type'] = 'BN'

    _walk(cfg, fn)
    return cfg


def narrow_model_cfg(model: dict, base: int = 16, width: int = 32,
                     depth: Optional[int] = None) -> dict:
    """In place: the same architecture with narrow layers.

    The ResNet backbone gets ``base`` base (and stem) channels (and
    ``depth`` when given); the FPN neck, RetinaNet / RPN / RoI heads get
    ``width`` channels (two-stage RPN proposals capped at 200 / 100 boxes);
    a DeepLabV3+ decode head gets ``width`` channels (``width // 2``, at
    least 4, for its low-level branch), its auxiliary head ``width``.
    Returns ``model``.
    """
    bb = model['backbone']
    if depth is not None:
        bb['depth'] = depth
    bb['base_channels'] = base
    if 'stem_channels' in bb or bb.get('type') == 'ResNetV1c':
        bb['stem_channels'] = base
    expansion = 1 if bb['depth'] in (18, 34) else 4
    chans = [base * expansion * 2**i for i in range(4)]
    if model.get('neck'):
        model['neck'].update(in_channels=chans, out_channels=width)
    if model.get('bbox_head'):
        model['bbox_head'].update(in_channels=width, feat_channels=width,
                                  stacked_convs=1)
    if model.get('rpn_head'):
        model['rpn_head'].update(in_channels=width, feat_channels=width)
        model['roi_head']['bbox_roi_extractor']['out_channels'] = width
        model['roi_head']['bbox_head'].update(in_channels=width,
                                              fc_out_channels=2 * width)
        model['train_cfg']['rpn_proposal'].update(nms_pre=200,
                                                  max_per_img=100)
        model['test_cfg']['rpn'].update(nms_pre=200, max_per_img=100)
    if model.get('decode_head'):
        model['decode_head'].update(
            in_channels=chans[3], c1_in_channels=chans[0], channels=width,
            c1_channels=max(width // 2, 4))
    if model.get('auxiliary_head'):
        model['auxiliary_head'].update(in_channels=chans[2], channels=width)
    return model


def _tiny_teacher(teacher: dict, checkpoint, size_hw):
    """Load the teacher config, shrink its model like the student's and
    return an inline ``dict(model=..., default_scope=...)``."""
    tconf = load_config(teacher['config'])
    model = copy.deepcopy(tconf.get('model', None) or tconf)
    if isinstance(model, ConfigDict):
        model = model.to_dict()
    model = tiny_model_cfg(model, size_hw=size_hw)
    teacher['config'] = dict(
        model=model, default_scope=tconf.get('default_scope', None))
    teacher['checkpoint'] = checkpoint
    return teacher


def tiny_model_cfg(model: dict,
                   teacher_checkpoint: Optional[str] = None,
                   size_hw: Optional[Tuple[int, int]] = None) -> dict:
    """In place: a model config that builds offline (random init).

    * no pretrained weights (:func:`strip_pretrained`), SyncBN -> BN;
    * ``size_hw``: the segmentor data preprocessor's ``size`` (fixed-size
      padding of the batch), if it has one;
    * for a ``LipschitzDistiller``: the same for the student, and the
      teacher config (a path) is loaded, shrunk the same way and inlined as
      ``teacher.config=dict(model=..., default_scope=...)``;
      ``teacher.checkpoint`` becomes ``teacher_checkpoint`` (default None:
      a random teacher) and ``probe_input_size`` becomes ``size_hw``.

    Returns ``model``.
    """
    if model.get('type', None) in DISTILLER_TYPES:
        tiny_model_cfg(model['student'], size_hw=size_hw)
        model['teacher'] = _tiny_teacher(
            dict(model['teacher']), teacher_checkpoint, size_hw)
        if size_hw is not None:
            model['probe_input_size'] = tuple(size_hw)
        return model
    strip_pretrained(model)
    sync_bn_to_bn(model)
    pre = model.get('data_preprocessor', None)
    if size_hw is not None and isinstance(pre, dict) and pre.get(
            'size', None) is not None:
        pre['size'] = tuple(size_hw)
    return model


# ------------------------------------------------------------------ data
def _devkit(data_root: str) -> str:
    """The ``VOCdevkit`` folder of ``data_root`` (it or its child)."""
    data_root = osp.abspath(data_root)
    if osp.basename(data_root.rstrip('/')) == 'VOCdevkit':
        return data_root
    child = osp.join(data_root, 'VOCdevkit')
    if not osp.isdir(child):
        raise FileNotFoundError(
            f'{data_root!r} is neither a VOCdevkit folder nor holds one')
    return child


def _retarget(path: str, devkit: str) -> str:
    """``'data/VOCdevkit/VOC2012'`` -> ``'<devkit>/VOC2012'``."""
    parts = path.replace('\\', '/').rstrip('/').split('/')
    if 'VOCdevkit' not in parts:
        raise ValueError(
            f'data_root {path!r} is not inside a VOCdevkit folder; '
            'only VOC configs can be moved to another VOCdevkit')
    rest = parts[parts.index('VOCdevkit') + 1:]
    new = osp.join(devkit, *rest)
    return new + '/' if path.endswith('/') else new


def _walk_data(cfg_dict: dict, fn) -> None:
    """``fn(d)`` on every dict of the config outside ``model`` (the loaders
    and top-level variables such as mmseg's ``dataset_train``)."""
    for key, value in cfg_dict.items():
        if key != 'model':
            _walk(value, fn)


def set_voc_data_root(cfg: Config, data_root: str) -> Config:
    """In place: every ``data_root`` under ``.../VOCdevkit/...`` (the
    top-level one and those of every dataset outside ``model``) moves to the
    ``VOCdevkit`` of ``data_root`` (the folder holding ``VOCdevkit``, e.g.
    the root made by :func:`mmlckd.testing.make_synthetic_voc`, or the
    ``VOCdevkit`` folder itself); what follows ``VOCdevkit`` is kept.
    Returns ``cfg``."""
    devkit = _devkit(data_root)

    def fn(d):
        if isinstance(d.get('data_root', None), str):
            d['data_root'] = _retarget(d['data_root'], devkit)

    if isinstance(cfg.get('data_root', None), str):
        cfg.data_root = _retarget(cfg.data_root, devkit)
    _walk_data(cfg._cfg_dict, fn)
    return cfg


def _tiny_pipeline(pipeline: Sequence[dict], scale_wh, crop_hw) -> None:
    for t in pipeline:
        if not isinstance(t, dict):
            continue
        kind = str(t.get('type', '')).split('.')[-1]
        if kind in ('Resize', 'RandomResize') and t.get('scale') is not None:
            t['scale'] = tuple(scale_wh)
        elif kind == 'RandomChoiceResize' and t.get('scales') is not None:
            t['scales'] = [tuple(scale_wh)]
        elif kind in ('RandomCrop', ) and t.get('crop_size') is not None:
            t['crop_size'] = tuple(crop_hw)
        elif kind == 'Pad' and t.get('size') is not None:
            t['size'] = tuple(crop_hw)
        for key in ('transforms', ):  # TestTimeAug / RandomApply wrappers
            sub = t.get(key, None)
            if isinstance(sub, (list, tuple)):
                flat = []
                for s in sub:
                    flat.extend(s if isinstance(s, (list, tuple)) else [s])
                _tiny_pipeline(flat, scale_wh, crop_hw)


def _tiny_data(cfg_dict: dict, scale_wh, crop_hw,
               repeat_times: Optional[int]) -> None:
    """Every pipeline and ``RepeatDataset`` outside ``model``."""

    def fn(d):
        kind = str(d.get('type', '')).split('.')[-1]
        if kind == 'RepeatDataset' and repeat_times is not None:
            d['times'] = repeat_times
        if isinstance(d.get('pipeline', None), (list, tuple)):
            _tiny_pipeline(d['pipeline'], scale_wh, crop_hw)

    for key, value in cfg_dict.items():
        if key.endswith('pipeline') and isinstance(value, (list, tuple)):
            _tiny_pipeline(value, scale_wh, crop_hw)
    _walk_data(cfg_dict, fn)


def single_process_loaders(cfg: Config,
                           batch_size: Optional[int] = None) -> Config:
    """In place: every data loader loads in the main process
    (``num_workers=0``, no persistent workers); ``batch_size``, when given,
    becomes the training batch size. Returns ``cfg``."""
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name, None)
        if not loader:
            continue
        if batch_size is not None and name == 'train_dataloader':
            loader['batch_size'] = batch_size
        loader['num_workers'] = 0
        loader['persistent_workers'] = False
    return cfg


def iter_schedule(cfg: Config, max_iters: int) -> Config:
    """In place: an ``IterBasedTrainLoop`` of ``max_iters`` iterations,
    validating once, at the end. Returns ``cfg``."""
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop',
        max_iters=max_iters,
        val_interval=max_iters)
    return cfg


def drop_validation(cfg: Config) -> Config:
    """In place: no validation loop, loader or evaluator. Returns ``cfg``."""
    cfg.val_dataloader = None
    cfg.val_cfg = None
    cfg.val_evaluator = None
    return cfg


# --------------------------------------------------------- tiny_voc_cfg
def _iter_schedulers(cfg: Config) -> None:
    """Epoch-based LR schedulers dropped, iteration-based ones kept."""
    scheds = cfg.get('param_scheduler', None)
    if isinstance(scheds, dict):
        scheds = [scheds]
    if scheds:
        kept = [s for s in scheds if not s.get('by_epoch', True)]
        cfg.param_scheduler = kept or None
    cfg.log_processor = dict(cfg.get('log_processor', None) or {},
                             by_epoch=False)


def _tiny_hooks(cfg: Config, max_iters: int) -> None:
    """Default and mmlckd hooks for a ``max_iters`` smoke run (see
    :func:`tiny_voc_cfg`)."""
    hooks = cfg.get('default_hooks', None) or {}
    if 'logger' in hooks and hooks['logger']:
        hooks['logger']['interval'] = 1
        hooks['logger']['log_metric_by_epoch'] = False
    if 'checkpoint' in hooks and hooks['checkpoint']:
        hooks['checkpoint'].update(by_epoch=False, interval=max_iters)
    if 'visualization' in hooks and hooks['visualization']:
        hooks['visualization']['draw'] = False
    cfg.default_hooks = hooks
    custom = []
    for h in cfg.get('custom_hooks', None) or []:
        h = dict(h)
        kind = str(h.get('type', '')).split('.')[-1]
        if kind == 'TeacherSanityCheckHook':
            h.update(min_score=0.0, max_batches=1)
        elif kind == 'DistillWeightHook':
            h['warmup'] = min(h.get('warmup', 0), max_iters // 2)
            h['by_epoch'] = False
            if h.get('stop_at', None) is not None:
                h['stop_at'] = min(h['stop_at'], max_iters)
        elif kind == 'ConnectorWarmupHook':
            h.update(iters=min(h['iters'], max_iters // 2), by_epoch=False)
        elif kind == 'LipschitzMonitorHook':
            h['interval'] = 1
        custom.append(h)
    if custom:
        cfg.custom_hooks = custom


def _tiny_model_and_sizes(cfg: Config, crop_hw, teacher_checkpoint) -> None:
    """The model (see :func:`tiny_model_cfg`), the top-level sizes and
    every top-level leftover (e.g. ``student = _base_.model``)."""
    tiny_model_cfg(cfg.model, teacher_checkpoint=teacher_checkpoint,
                   size_hw=crop_hw)
    if isinstance(cfg.get('data_preprocessor', None), dict) and \
            cfg.data_preprocessor.get('size', None) is not None:
        cfg.data_preprocessor['size'] = crop_hw
    if cfg.get('crop_size', None) is not None:
        cfg.crop_size = crop_hw
    for key in list(cfg.keys()):
        if key != 'model':
            strip_pretrained(cfg[key])
            sync_bn_to_bn(cfg[key])


def _tiny_balance(cfg: Config, max_iters: int) -> None:
    """A distiller's balancer calibrates on the first ``max_iters - 1``
    steps at most (the default 10 would outlast a smoke run, and
    ``tools/train.py`` refuses that), so the last step is weighted."""
    model = cfg.get('model', None)
    if not model or model.get('type') not in DISTILLER_TYPES or \
            model.get('balance', dict()) is None:
        return
    balance = dict(model.get('balance', None) or {})
    balance['iters'] = max(1, min(balance.get('iters', 10), max_iters - 1))
    model['balance'] = balance


def tiny_voc_cfg(cfg: Config,
                 data_root: Optional[str] = None,
                 img_scale: Tuple[int, int] = (64, 64),
                 batch_size: int = 2,
                 max_iters: int = 2,
                 val: bool = True,
                 work_dir: Optional[str] = None,
                 teacher_checkpoint: Optional[str] = None,
                 repeat_times: int = 1,
                 seed: Optional[int] = 0) -> Config:
    """Rewrite a VOC recipe (loaded ``Config``) in place for a smoke run.

    Args:
        cfg: a config of ``configs/`` (or a stock mmdet/mmseg VOC config):
            detector, segmentor or ``LipschitzDistiller``.
        data_root: see :func:`set_voc_data_root` (detection's
            VOC2007+VOC2012 concat in a ``RepeatDataset``, segmentation's
            ``train``+``aug`` concat, val/test sets). ``None``: data paths
            are left alone (e.g. to build the model only).
        img_scale: ``(w, h)`` for every ``Resize``/``RandomResize``
            ``scale``; crops (``RandomCrop.crop_size``, ``Pad.size``, the
            segmentor data preprocessor's ``size``) become ``(h, w)``.
        batch_size: training batch size per process (val/test keep theirs).
        max_iters: iterations of an ``IterBasedTrainLoop``; validation (if
            ``val``) and a checkpoint (``iter_<max_iters>.pth``) at the end.
        val: keep the validation loop (else val loader/evaluator removed).
        work_dir: sets ``cfg.work_dir`` when given.
        teacher_checkpoint: for distillers, the teacher's checkpoint
            (default None: a random teacher, which the distiller warns
            about).
        repeat_times: ``RepeatDataset.times`` (stock VOC detection: 3).
        seed: ``randomness.seed`` (None: leave it).

    Also: no pretrained weights anywhere (also in the teacher, whose config
    is inlined, see :func:`tiny_model_cfg`), SyncBN -> BN, data loaders
    with ``num_workers=0`` / ``persistent_workers=False``, epoch-based LR
    schedulers dropped (iteration-based ones kept), logger and
    ``LipschitzMonitorHook`` interval 1, ``CheckpointHook`` by iteration
    every ``max_iters``, visualization hook ``draw=False``, and for the
    mmlckd hooks: ``TeacherSanityCheckHook`` accepts any score on one batch
    (a random teacher scores ~0), ``DistillWeightHook`` warm-up and
    connector warm-up shortened to ``max_iters // 2`` so both phases run,
    and a distiller's balancer calibrates on at most ``max_iters - 1``
    steps. Returns ``cfg`` (modified in place).
    """
    scale_wh = tuple(img_scale)
    crop_hw = (scale_wh[1], scale_wh[0])
    _tiny_model_and_sizes(cfg, crop_hw, teacher_checkpoint)
    if data_root is not None:
        set_voc_data_root(cfg, data_root)
    _tiny_data(cfg._cfg_dict, scale_wh, crop_hw, repeat_times)
    single_process_loaders(cfg, batch_size)
    iter_schedule(cfg, max_iters)
    _val_loop(cfg, val)
    _iter_schedulers(cfg)
    _tiny_hooks(cfg, max_iters)
    _tiny_balance(cfg, max_iters)
    _fresh_run(cfg, seed, work_dir)
    return cfg


def _val_loop(cfg: Config, val: bool) -> None:
    """Validation removed (``val=False``), else a ``ValLoop`` if none."""
    if not val:
        drop_validation(cfg)
    elif cfg.get('val_cfg', None) is None:
        cfg.val_cfg = dict(type='ValLoop')


def _fresh_run(cfg: Config, seed: Optional[int],
               work_dir: Optional[str]) -> None:
    """No cudnn benchmark, the seed and work dir, no load_from/resume."""
    env = cfg.get('env_cfg', None) or {}
    env['cudnn_benchmark'] = False
    cfg.env_cfg = env
    if seed is not None:
        cfg.randomness = dict(seed=seed)
    if work_dir is not None:
        cfg.work_dir = work_dir
    cfg.load_from = None
    cfg.resume = False
