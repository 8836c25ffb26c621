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


def test_distill_step_bench_quick(tmp_path):
    out_json = tmp_path / 'bench.json'
    out = run_bench('distill_step_bench.py', '--quick', '--json',
                    str(out_json))
    overheads = re.findall(
        r'overhead = t_distill / \(t_student \+ t_teacher\) = ' + NUMBER,
        out)
    memories = re.findall(
        r'memory = peak_distill / \(peak_student \+ '
        r'teacher_weights_and_activations\) = ' + NUMBER, out)
    assert len(overheads) == 3 and len(memories) == 3, out
    assert all(positive_finite(x) for x in overheads + memories), out
    shares = re.findall(r'worst-case share of [^:]+: ' + NUMBER + '%', out)
    assert len(shares) == 3 and all(positive_finite(x) for x in shares), out

    res = json.loads(out_json.read_text())
    assert [m['model'] for m in res['models']] == [
        'retinanet', 'faster_rcnn', 'deeplabv3plus']
    for m in res['models']:
        for mode in ('student', 'teacher', 'distill', 'terms', 'lipschitz'):
            assert positive_finite(m['times'][mode]['cpu']), (m['model'],
                                                              mode)
        for mode in ('student', 'teacher', 'distill'):
            assert positive_finite(m['memory'][mode]['peak'])
        # the teacher ran only as deep as the recorded layers need (the
        # task-aware default reads the head's logits, so up to all of it)
        stop = m['early_stop']
        assert 0 < stop['early_calls'] <= stop['full_calls'], m['model']
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
