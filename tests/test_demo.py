"""The end-to-end demo, shortened (``--quick``): real code path (synthetic
VOC generation, mmengine Runner training of teacher / baseline / LONDON
student, VOCMetric test, reports), tiny data and 2 iterations per model."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def quick_demo(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('demo')
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--quick',
         '--data-seed', '1', '--work-dir', str(work_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return work_dir, proc.stdout


def test_quick_demo_prints_table(quick_demo):
    _, out = quick_demo
    assert '[demo 1/5]' in out and '[demo 5/5] results' in out
    assert '| student + LONDON |' in out
    assert 'Synthetic data' in out and 'ONE seed' in out


def test_quick_demo_markdown(quick_demo):
    work_dir, _ = quick_demo
    md = (work_dir / 'results.md').read_text()
    for row in ('| teacher |', '| student (baseline) |',
                '| student + LONDON |'):
        assert row in md
    assert 'mAP@0.5' in md and 'not the real PASCAL VOC' in md
    assert 'data seed 1' in md
    assert 'det_training.png' in md


def test_quick_demo_json(quick_demo):
    work_dir, _ = quick_demo
    res = json.loads((work_dir / 'results.json').read_text())
    assert res['synthetic_data'] is True and res['quick'] is True
    assert res['seeds'] == [0]
    assert res['data_args']['seed'] == 1
    # CPU default: one core left to the data-loading worker
    assert res['torch_threads'] == max(1, (os.cpu_count() or 1) - 1)
    assert res['data_root'] == str(work_dir / 'data-quick-seed1')
    det = res['tasks']['det']
    assert det['data']['seed'] == 1
    assert det['metric_key'] == 'pascal_voc/mAP'
    assert set(det['models']) == {'teacher', 'student', 'london'}
    for role, m in det['models'].items():
        for key in ('metric', 'wall_time_s', 'train_time_s', 'params',
                    'test_images_per_s'):
            assert isinstance(m[key], (int, float)), (role, key, m[key])
        assert 0.0 <= m['metric'] <= 100.0
        assert m['wall_time_s'] > 0 and m['params'] > 0
        assert len(m['runs']) == 1 and m['runs'][0]['seed'] == 0
    # the deployed LONDON student is exactly the baseline architecture
    assert det['models']['london']['params'] == \
        det['models']['student']['params']
    assert det['models']['teacher']['params'] > \
        det['models']['student']['params']
    assert isinstance(det['london_minus_baseline']['mean'], float)
    assert res['total_wall_time_s'] > 0


def test_quick_demo_artifacts(quick_demo):
    work_dir, _ = quick_demo
    png = work_dir / 'det_training.png'
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    london = work_dir / 'det' / 'seed0' / 'london'
    lines = (london / 'lipschitz.jsonl').read_text().splitlines()
    assert lines and 'sigma_t.backbone.0' in json.loads(lines[-1])
    assert (london / 'student_final.pth').is_file()
    assert (work_dir / 'det' / 'seed0' / 'teacher' / 'iter_2.pth').is_file()
    # --data-seed 1: its own data folder, a real VOCdevkit
    assert (work_dir / 'data-quick-seed1' / 'VOCdevkit' / 'VOC2007' /
            'ImageSets' / 'Main' / 'test.txt').is_file()


def test_demo_variants_quick_and_resumes(tmp_path):
    """tools/demo_variants.py: paired gains per variant; a rerun skips the
    finished (variant, seed) pairs."""
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'demo_variants.py'),
           '--quick', '--seeds', '0', '--variants', 'default', 'lip_only',
           '--work-dir', str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    with open(tmp_path / 'variants.jsonl') as f:
        recs = [json.loads(line) for line in f]
    assert [r['name'] for r in recs] == ['teacher', 'student', 'default',
                                         'lip_only']
    assert all(r['data_seed'] == 1 and 0 <= r['map'] <= 100 for r in recs)
    assert '| lip_only |' in proc.stdout
    # lip_only really drops the OFD term: its run logged no loss_feat
    log = (tmp_path / 'lip_only_seed0' / 'losses.jsonl').read_text()
    assert 'loss_lipschitz' in log and 'loss_feat' not in log
    again = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-6000:]
    assert '[variants]' not in again.stdout  # nothing retrained
    with open(tmp_path / 'variants.jsonl') as f:
        assert len(f.readlines()) == 4
