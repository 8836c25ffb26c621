"""The tools' command lines as an OpenMMLab user expects them: mmdet's /
mmseg's tools/test.py options, help texts with descriptions and defaults."""
import os.path as osp

import pytest
from mmengine.config import Config

from mmlckd.cli.args import load_tool_cfg as load_cfg

from tool_modules import load_tool


def _test_args(*extra):
    return load_tool('test').parse_args(['cfg.py', 'ckpt.pth', *extra])


def test_test_tool_show_options_like_mmdet_and_mmseg(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    apply = load_tool('test').apply_show_and_tta
    det = Config(dict(default_hooks=dict(
        visualization=dict(type='DetVisualizationHook')),
        visualizer=dict(type='DetLocalVisualizer')))
    apply(det, _test_args('--show', '--show-dir', 'painted',
                          '--wait-time', '0.5'))
    assert det.default_hooks.visualization == dict(
        type='DetVisualizationHook', draw=True, show=True, wait_time=0.5,
        test_out_dir='painted')
    seg = Config(dict(default_hooks=dict(
        visualization=dict(type='SegVisualizationHook')),
        visualizer=dict(type='SegLocalVisualizer')))
    apply(seg, _test_args('--show-dir', 'painted'))
    assert seg.default_hooks.visualization.draw is True
    assert 'show' not in seg.default_hooks.visualization
    assert seg.visualizer.save_dir == 'painted'
    with pytest.raises(SystemExit, match='visualization hook'):
        apply(Config(dict(default_hooks=dict())), _test_args('--show'))


def test_test_tool_tta_like_mmseg(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    apply = load_tool('test').apply_show_and_tta
    student = dict(type='EncoderDecoder')
    cfg = Config(dict(
        model=student,
        test_dataloader=dict(dataset=dict(type='RepeatDataset', dataset=dict(
            type='PascalVOCDataset', pipeline=['plain'])))))
    with pytest.raises(SystemExit, match='tta_model and tta_pipeline'):
        apply(cfg, _test_args('--tta'))
    cfg.tta_model = dict(type='SegTTAModel')
    cfg.tta_pipeline = ['tta']
    apply(cfg, _test_args('--tta'))
    assert cfg.model == dict(type='SegTTAModel', module=student)
    assert cfg.test_dataloader.dataset.dataset.pipeline == ['tta']
    # without --tta nothing changes
    plain = Config(dict(model=student))
    apply(plain, _test_args())
    assert plain.model == student


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        load_tool('export_student').main(['-h'])
    out = capsys.readouterr().out
    assert 'Extract the student from a distillation checkpoint' in out
    with pytest.raises(SystemExit):
        load_tool('make_synthetic_voc').parse_args(['-h'])
    out = ' '.join(capsys.readouterr().out.split())
    for default in ('--trainval-07 TRAINVAL_07 VOC2007 trainval images '
                    '(default: 64)', '(default: 32)', '(default: 16)',
                    '--seed SEED random seed (same seed, same dataset) '
                    '(default: 0)', '(default: 4)'):
        assert default in out, default


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_tools_take_a_package_config(tool):
    """``tools/train.py mmdet::pascal_voc/...`` as mmengine's ``_base_``
    takes it (issue 19, item 8): the installed package's config, the work
    dir named after it; a wrong name lists close matches."""
    mod = load_tool(tool)
    argv = ['mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py'] + (
        ['ckpt.pth'] if tool == 'test' else [])
    cfg = load_cfg(mod.parse_args(argv))
    assert cfg.model.type == 'RetinaNet'
    assert cfg.model.bbox_head.num_classes == 20
    assert cfg.filename.endswith(
        'configs/pascal_voc/retinanet_r50_fpn_1x_voc0712.py')
    assert osp.normpath(cfg.work_dir) == osp.join(
        'work_dirs', 'retinanet_r50_fpn_1x_voc0712')
    argv[0] = 'mmdet::pascal_voc/retinanet_r50_fpn_1x_voc07.py'
    with pytest.raises(FileNotFoundError,
                       match='retinanet_r50_fpn_1x_voc0712.py'):
        load_cfg(mod.parse_args(argv))


def test_train_tool_gives_a_distillation_run_its_log_hooks(tmp_path):
    """A config that only sets model.type='mmlckd.LipschitzDistiller' (the
    README's) gets the monitor hook from tools/train.py, as it gets the
    export hook: the start line, short train lines, shares only when
    measured, weights in %.3e and lipschitz.jsonl for tools/plot_run.py
    (issue 19, items 2, 7 and 8). A config's own hook settings stay."""
    path = tmp_path / 'distill.py'
    path.write_text(
        "model = dict(type='mmlckd.LipschitzDistiller', student=dict(), "
        "teacher=dict(config='t.py'))\n")
    train = load_tool('train')
    cfg = train.build_cfg(train.parse_args([str(path)]))
    assert [h['type'] for h in cfg.custom_hooks] == [
        'mmlckd.LipschitzMonitorHook', 'mmlckd.StudentExportHook']
    path.write_text(
        "model = dict(type='mmlckd.LipschitzDistiller', student=dict(), "
        "teacher=dict(config='t.py'))\n"
        "custom_hooks = [dict(type='mmlckd.LipschitzMonitorHook', "
        "interval=5, out_file=None)]\n")
    cfg = train.build_cfg(train.parse_args([str(path)]))
    assert cfg.custom_hooks == [
        dict(type='mmlckd.LipschitzMonitorHook', interval=5, out_file=None),
        dict(type='mmlckd.StudentExportHook')]
    # a plain model is left alone
    path.write_text("model = dict(type='RetinaNet')\n")
    cfg = train.build_cfg(train.parse_args([str(path)]))
    assert not cfg.get('custom_hooks')
