"""The demo's report: Markdown / JSON tables and the training plot."""
import json
import os.path as osp
from typing import Dict, List, Optional

from mmlckd.checkpoint import atomic_write
from .study import REGIMES, ROW_NAMES

__all__ = ['study_markdown', 'summary_markdown', 'write_results',
           'plot_run', 'read_jsonl']

#: the distillation terms' loss names (the study's task-aware terms too)
_DISTILL_KEYS = ('loss_lipschitz', 'loss_feat', 'loss_kd', 'loss_neck',
                 'loss_preds', 'loss_head_lip')


def _gap_closed(diff: Optional[dict], cell: dict) -> str:
    """The paired gain as a share of (teacher - student alone)."""
    teacher = cell.get('teacher')
    base = cell['rows'].get('baseline', {}).get('metric')
    if diff is None or teacher is None or base is None:
        return '--'
    gap = teacher - base['mean']
    if gap <= 0:
        return 'no gap'
    if diff['n'] < 2:
        return f'{100 * diff["mean"] / gap:.0f}%'
    return f'{100 * diff["mean"] / gap:.0f}% ± {100 * diff["se"] / gap:.0f}%'


def _pm(stat: dict, digits: int = 1, show_n: bool = True) -> str:
    if stat['n'] < 2:
        return f'{stat["mean"]:.{digits}f}' + (' (n=1)' if show_n else '')
    return f'{stat["mean"]:.{digits}f} ± {stat["se"]:.{digits}f}'


def _verdict(stat: dict) -> str:
    if stat['n'] < 2:
        return 'one seed: no verdict'
    if stat['gain']:
        return '**better** (> 2 SE)'
    if stat['loss']:
        return '**worse** (< -2 SE)'
    return 'within noise'


def study_markdown(table: Dict[str, dict], metric_names: Dict[str, str],
                   header: str) -> str:
    """One table per (regime, data seed), in the order of ``REGIMES``."""
    lines = [header, '', summary_markdown(table), '']
    cells = _ordered(table)
    for cell in cells:
        regime = REGIMES[cell['regime']]
        metric = metric_names[regime['task']]
        rows = cell['rows']
        any_row = next(iter(rows.values()))
        n_img = any_row['train_images']
        lines += [
            f'### {regime["title"]} -- data seed {cell["data_seed"]}', '',
            f'Teacher: {cell["teacher"]:.1f}. ' if cell['teacher'] is not None
            else '',
            (f'Students train on {n_img} images. ' if n_img > 0 else '') +
            f'Bootstrap SE of one model\'s {metric} over the test images: '
            f'{any_row["bootstrap_se"]:.2f}.', '',
            f'| student | {metric}: mean ± SE | minus baseline '
            '(paired by seed) | verdict | share of the teacher-student gap '
            'closed |', '|---|---|---|---|---|']
        for row in ROW_NAMES:
            if row not in rows:
                continue
            r = rows[row]
            diff = r['vs_baseline']
            lines.append(
                f'| {ROW_NAMES[row]} | {_pm(r["metric"], show_n=False)} '
                f'(n={r["metric"]["n"]}) | '
                f'{"--" if diff is None else _pm(diff, 2)} | '
                f'{"--" if diff is None else _verdict(diff)} | '
                f'{_gap_closed(diff, cell)} |')
        lines.append('')
        if cell.get('contrasts'):
            lines += ['| paired contrast (same student seeds) | difference '
                      '| verdict |', '|---|---|---|']
            lines += [f'| {name} | {_pm(d, 2, show_n=False)} '
                      f'(n={d["n"]}) | {_verdict(d)} |'
                      for name, d in cell['contrasts'].items()]
            lines.append('')
    return '\n'.join(lines)


def _ordered(table: Dict[str, dict]) -> List[dict]:
    """The (regime, data seed) cells in the order of ``REGIMES``."""
    return sorted(table.values(), key=lambda c: (
        list(REGIMES).index(c['regime']), c['data_seed']))


def summary_markdown(table: Dict[str, dict]) -> str:
    """One line per (regime, data seed): the baseline and every row's
    paired difference to it (mean ± SE over seeds, * beyond 2 SE)."""
    rows = [r for r in ROW_NAMES if r != 'baseline' and any(
        r in c['rows'] for c in table.values())]
    head = ('| regime | data seed | teacher | student alone | ' +
            ' | '.join(f'{ROW_NAMES[r]} minus alone' for r in rows) + ' |')
    lines = [head, '|' + '---|' * (4 + len(rows))]
    cells = _ordered(table)
    for c in cells:
        teacher = '--' if c['teacher'] is None else f'{c["teacher"]:.1f}'
        diffs = []
        for r in rows:
            d = c['rows'].get(r, {}).get('vs_baseline')
            mark = '' if d is None else (
                ' (better)' if d['gain'] else ' (worse)' if d['loss'] else '')
            diffs.append('not run' if d is None else _pm(d, 1) + mark)
        base = c['rows']['baseline']['metric']
        lines.append(f'| {c["regime"]} | {c["data_seed"]} | {teacher} | '
                     f'{_pm(base)} | ' + ' | '.join(diffs) + ' |')
    return '\n'.join(lines)


def write_results(out_dir: str, results: dict, markdown: str) -> dict:
    """``results.json`` and ``results.md`` (atomic writes)."""
    paths = dict(json=osp.join(out_dir, 'results.json'),
                 markdown=osp.join(out_dir, 'results.md'))
    for key, text in (('json', json.dumps(results, indent=1, default=str)),
                      ('markdown', markdown + '\n')):
        data = text.encode('utf-8')
        atomic_write(paths[key], lambda f: f.write(data))
    return paths


def read_jsonl(path: str) -> List[dict]:
    if not osp.isfile(path):
        return []
    out = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _task_loss(rec: dict) -> Optional[float]:
    vals = [v for k, v in rec.items()
            if 'loss' in k and k != 'loss' and k not in _DISTILL_KEYS]
    return sum(vals) if vals else None


def _smooth(ys: list, window: int) -> list:
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _series(recs: List[dict], key, window: int = 1):
    pts = [(r['iter'], key(r) if callable(key) else r.get(key))
           for r in recs]
    pts = [(x, y) for x, y in pts if y is not None]
    if not pts:
        return [], []
    xs, ys = zip(*pts)
    return list(xs), _smooth(list(ys), window)


def plot_run(path: str, title: str, distilled_dir: str,
             baseline_dir: Optional[str],
             history: str = 'losses.jsonl') -> str:
    """Three panels from one distilled run (and its baseline): per-block
    Lipschitz estimates of teacher and student, each term's share of the
    gradient norm on the student, and the task losses. ``history``: the
    JSONL file of each run dir (``tools/plot_run.py``: a training run's
    ``lipschitz.jsonl``)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    recs = read_jsonl(osp.join(distilled_dir, history))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    keys = sorted({k[len('sigma_s.'):] for r in recs for k in r
                   if k.startswith('sigma_s.')})
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, key in enumerate(keys):
        for net, style, who in (('t', '--', 'teacher'), ('s', '-',
                                                          'student')):
            xs, ys = _series(recs, f'sigma_{net}.{key}', 10)
            ax.plot(xs, ys, style, color=colors[i % len(colors)],
                    label=f'{who} pair {key.rpartition(".")[2]}')
    ax.set(yscale='log', xlabel='iteration', ylabel='sigma (top singular '
           'value of TM)', title='Per-pair Lipschitz estimates '
           '(dashed: teacher)')
    if keys:
        ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    fixed = {'gshare_task': 'C3', 'gshare_lipschitz': 'C2',
             'gshare_feat': 'C1', 'gshare_kd': 'C4'}
    others = sorted({k for r in recs for k in r if k.startswith('gshare_')}
                    - set(fixed))  # the pluggable terms
    colors = dict(fixed, **{k: f'C{5 + i}' for i, k in enumerate(others)})
    for key, color in colors.items():
        xs, ys = _series(recs, key)
        if xs:
            ax.plot(xs, ys, 'o-', ms=3, color=color, label=key[7:])
    ax.set(ylim=(0, 1), xlabel='iteration', ylabel='share of the gradient '
           'norm on the student', title='Gradient shares (after the '
           'balancer\'s calibration)')
    ax.legend(fontsize=8)
    ax = axes[2]
    for run_dir, run_recs, color, label in (
            (baseline_dir, None, 'C0', 'student alone'),
            (distilled_dir, recs, 'C3', 'distilled')):  # read above
        if run_dir:
            if run_recs is None:
                run_recs = read_jsonl(osp.join(run_dir, history))
            xs, ys = _series(run_recs, _task_loss, 20)
            ax.plot(xs, ys, color=color, label=label)
    ax.set(yscale='log', xlabel='iteration', ylabel='task loss (moving '
           'average)', title='Task loss')
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
