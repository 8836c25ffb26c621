"""The benchmarks run in their CI-sized ``--quick`` mode and print their
ratio lines. Only that the numbers are there and sane is checked, never a
timing target (CI machines are shared and noisy)."""
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from tool_modules import REPO as ROOT

NUMBER = r'([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)'

pytestmark = pytest.mark.slow


def run_bench(script, *args, timeout=600):
    # the benchmarks import this checkout's mmlckd, installed or not
    path = os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH'))
                           if p)
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'benchmarks', script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f'{script} {" ".join(args)} exited with {proc.returncode}:\n'
        f'{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}')
    return proc.stdout


def positive_finite(text):
    value = float(text)
    return math.isfinite(value) and value > 0


def ratio_values(name, out):
    """The values of the printed ``<name> = <formula> = <value>`` lines."""
    return re.findall(r'^   ' + name + r' = [^=]+ = ' + NUMBER, out,
                      flags=re.M)


FAMILIES = ['retinanet', 'faster_rcnn', 'deeplabv3plus']


def test_distill_step_bench_quick(tmp_path):
    out_json = tmp_path / 'bench.json'
    out = run_bench('distill_step_bench.py', '--quick', '--json',
                    str(out_json))
    # per family: the ratios of issue 21's targets, printed and finite
    for name in ('steady', 'amortised', 'calibration', 'memory'):
        values = ratio_values(name, out)
        assert len(values) == 3, (name, out)
        assert all(positive_finite(x) for x in values), (name, out)
    # the targets table: one line per family, every ratio, PASS or MISS
    # (which one is not checked: CI machines are shared and noisy)
    rows = re.findall(r'^   (\w+)' + r'\s+'.join([''] + [NUMBER] * 5) +
                      r'\s+(PASS|MISS)', out, flags=re.M)
    assert [r[0] for r in rows] == FAMILIES, out
    assert all(positive_finite(x) for r in rows for x in r[1:6]), out
    # each term alone: its steady, amortised and calibration ratios
    alone = re.findall(r'^   alone:(\w+)' + r'\s+'.join(
        [''] + [NUMBER] * 5), out, flags=re.M)
    assert all(positive_finite(x) for r in alone for x in r[1:]), out
    shares = re.findall(r'worst-case share of [^:]+: ' + NUMBER + '%', out)
    assert len(shares) == 3 and all(positive_finite(x) for x in shares), out

    res = json.loads(out_json.read_text())
    assert [m['model'] for m in res['models']] == FAMILIES
    # one variant per term of the default distiller, printed above
    assert [a[0] for a in alone] == [
        t for m in res['models'] for t in m['variants']['default']['terms']]
    for m in res['models']:
        default = m['variants']['default']
        assert set(default['terms']) >= {'feat', 'lipschitz', 'preds'}
        for mode in ('student', 'teacher', 'teacher_skip', 'steady',
                     'calibration', 'share', 'terms', 'lipschitz'):
            assert positive_finite(default['times'][mode]['cpu']), (
                m['model'], mode)
        guard = default['times']['guard']['wall']  # microseconds
        assert math.isfinite(guard) and guard >= 0, m['model']
        # a 1x schedule: the balancer's calibration and gradient-share
        # steps are a small part of it
        counts = default['counts']
        # only the calibration's second half measures (the first half
        # costs a steady step and counts as one)
        calib = default['calibration_steps']
        assert counts['calibration'] == calib - calib // 2 > 0
        assert 0 < counts['share'] < counts['steady'], counts
        assert sum(counts.values()) == m['schedule']['iters'], m['model']
        for mode in ('student', 'teacher', 'distill'):
            assert positive_finite(m['memory'][mode]['peak'])
        for phase in ('calibration', 'share', 'steady'):
            assert positive_finite(m['memory']['distill'][phase])
        # the teacher ran only as deep as the recorded layers need (the
        # task-aware default reads the head's logits, so up to all of it)
        for key, v in m['variants'].items():
            stop = v['early_stop']
            assert 0 < stop['early_calls'] <= stop['full_calls'], key
        # RetinaNet's default reads the classifier, not the box branch:
        # the distiller's teacher skips it (mode (b) does not)
        if m['model'] == 'retinanet':
            assert 'bbox_head.retina_reg' in default['early_stop'][
                'skipped'], default['early_stop']
    assert res['sweep']['rows'], res['sweep']


def test_lipschitz_bench_quick():
    out = run_bench('lipschitz_bench.py', '--quick', '--threads', '1')
    lines = out.splitlines()
    headers = [i for i, line in enumerate(lines) if 'x ref-10' in line]
    assert headers, out
    rows = {}
    for start in headers:
        for line in lines[start + 2:]:  # skip the dashes under the header
            if not line.strip() or not re.search(NUMBER + r'\s*$', line):
                break
            # the speed-up over ref-10 (printed with one decimal: a much
            # slower estimator, e.g. the exact SVD, may show 0.0)
            ratio = float(line.split()[-1])
            assert math.isfinite(ratio) and ratio >= 0, line
            rows[line.split()[0]] = ratio
    assert len(rows) >= 4, out
    assert rows.get('ref-10') == 1.0, out
