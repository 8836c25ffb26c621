"""Results of the demo: aggregation, Markdown / JSON tables and plots."""
import json
import math
import os.path as osp
from typing import Dict, List, Optional, Sequence

from .tasks import ROLE_NAMES, ROLES, TASKS

__all__ = ['mean_std', 'summarize_task', 'task_markdown', 'write_results',
           'plot_task', 'read_jsonl']


def mean_std(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (None for one value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return dict(mean=None, std=None, n=0)
    mean = sum(vals) / len(vals)
    std = None
    if len(vals) > 1:
        std = math.sqrt(sum((v - mean)**2 for v in vals) / (len(vals) - 1))
    return dict(mean=mean, std=std, n=len(vals))


def summarize_task(task_name: str, runs: Dict[str, List[dict]],
                   complexity: Dict[str, dict], info: dict) -> dict:
    """The per-task result dict written to results.json."""
    task = TASKS[task_name]
    models = {}
    for role in ROLES:
        role_runs = runs.get(role, [])
        metric = mean_std(r['metric'] for r in role_runs)
        models[role] = dict(
            name=ROLE_NAMES[role],
            arch=task.arch[role],
            config=osp.join('configs', 'demo', task.configs[role]),
            metric=metric['mean'],
            metric_std=metric['std'],
            num_seeds=metric['n'],
            params=complexity[role]['params'],
            flops=complexity[role]['flops'],
            train_time_s=mean_std(r['train_time_s']
                                  for r in role_runs)['mean'],
            test_images_per_s=mean_std(r['test_images_per_s']
                                       for r in role_runs)['mean'],
            wall_time_s=sum(r['wall_time_s'] for r in role_runs),
            runs=role_runs)
        if role == 'london':
            models[role]['training_extra_params'] = complexity[role].get(
                'training_extra_params')
    by_seed = {r['seed']: r['metric'] for r in runs.get('student', [])}
    gains = [r['metric'] - by_seed[r['seed']]
             for r in runs.get('london', []) if r['seed'] in by_seed]
    gain = mean_std(gains)
    gain['per_seed'] = gains
    return dict(
        task=task_name,
        title=task.title,
        metric=task.metric_name,
        metric_key=task.metric_key,
        evaluation=task.data_desc,
        models=models,
        london_minus_baseline=gain,
        **info)


def _fmt_metric(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return 'n/a'
    return f'{mean:.1f}' if std is None else f'{mean:.1f} ± {std:.1f}'


def _fmt_gain(gain: dict) -> str:
    if gain['mean'] is None:
        return 'n/a'
    s = f'{gain["mean"]:+.1f}'
    return s if gain['std'] is None else s + f' ± {gain["std"]:.1f}'


def _fmt_num(value: Optional[float], scale: float, digits: int) -> str:
    return 'n/a' if value is None else f'{value / scale:.{digits}f}'


def _digits(value: Optional[float]) -> int:
    return 1 if value is not None and value < 10 else 0


def task_markdown(res: dict) -> str:
    """A Markdown section (title, caveat, table) for one task's results."""
    data = res['data']
    seeds = res['seeds']
    n_seeds = len(seeds)
    seed_txt = (f'{n_seeds} seeds {seeds}, mean ± sample std'
                if n_seeds > 1 else f'ONE seed ({seeds[0]}), no error bars')
    t_seeds = res.get('teacher_seeds', seeds)
    if n_seeds > 1 and len(t_seeds) == 1:
        seed_txt += (f' for the students; ONE teacher (seed {t_seeds[0]}) '
                     'distils every LONDON student')
    lines = [
        f'### {res["title"]}',
        '',
        f'**Synthetic data** (`mmlckd.datasets.make_synthetic_voc`, '
        f'{len(data["classes"])} classes: {", ".join(data["classes"])}; '
        f'{data["train_images"]} train / {data["test_images"]} test images, '
        f'{data["img_size"]} px, data seed {data.get("seed", 0)}) -- not '
        'the real PASCAL VOC; numbers are '
        'not comparable to published VOC results. '
        f'{res["evaluation"]}. {seed_txt}; every model trained '
        f'{res["iters"]} iterations x batch {res["batch_size"]} from random '
        f'init on {res["device"]}.',
        '',
        f'| model | architecture | {res["metric"]} | params (M) | '
        'GFLOPs/img | test img/s | train s/run | wall s (all runs) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for role in ROLES:
        m = res['models'][role]
        ips = m['test_images_per_s']
        lines.append(
            f'| {m["name"]} | {m["arch"]} | '
            f'{_fmt_metric(m["metric"], m["metric_std"])} | '
            f'{_fmt_num(m["params"], 1e6, 2)} | '
            f'{_fmt_num(m["flops"], 1e9, 3)} | '
            f'{_fmt_num(ips, 1, _digits(ips))} | '
            f'{_fmt_num(m["train_time_s"], 1, 0)} | '
            f'{_fmt_num(m["wall_time_s"], 1, 0)} |')
    gain = res['london_minus_baseline']
    extra = res['models']['london'].get('training_extra_params')
    weights = res.get('loss_weights') or {}
    lines += [
        '',
        f'LONDON student - baseline student: **{_fmt_gain(gain)}** '
        f'{res["metric"].split(" ")[0]} points (paired by seed; '
        'as measured, positive or not).',
        '',
        f'GFLOPs: one {res["input_size"][0]}x{res["input_size"][1]} image, '
        'mmengine FlopAnalyzer (1 multiply-add = 1 FLOP). The LONDON student '
        'deploys exactly the baseline architecture (its OFD connectors, '
        f'{_fmt_num(extra, 1e3, 1)}k parameters, are training-only). '
        'Distillation: backbone stages, loss weights LONDON '
        f'{weights.get("lipschitz")}, OFD {weights.get("feature")}. '
        'test img/s: the whole test loop (data loading, NMS/metric '
        'included).',
    ]
    return '\n'.join(lines)


def write_results(out_dir: str, results: dict) -> dict:
    """``results.json`` and ``results.md`` in ``out_dir``; returns paths."""
    json_path = osp.join(out_dir, 'results.json')
    md_path = osp.join(out_dir, 'results.md')
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=2)
        f.write('\n')
    parts = [
        '## mmlckd demo: LONDON distillation on synthetic VOC', '',
        f'Total wall time {results["total_wall_time_s"]:.0f} s '
        f'({results["device"]}, torch threads: {results["torch_threads"]}).',
        ''
    ]
    for name, res in results['tasks'].items():
        parts += [task_markdown(res), '']
        if res.get('plot'):
            png = osp.basename(res['plot'])
            parts += [f'![{name} training curves]({png})', '']
    with open(md_path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(parts))
    return dict(json=json_path, markdown=md_path)


def read_jsonl(path: str) -> List[dict]:
    if not path or not osp.exists(path):
        return []
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


_DISTILL_KEYS = ('loss_feat', 'loss_lipschitz', 'loss_kd')


def _task_loss(rec: dict) -> Optional[float]:
    vals = [v for k, v in rec.items()
            if 'loss' in k and k != 'loss' and k not in _DISTILL_KEYS]
    return sum(vals) if vals else None


def _smooth(xs: list, ys: list, window: int):
    if window <= 1 or len(ys) < 2:
        return xs, ys
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return xs, out


def plot_task(path: str, title: str, run_dirs: Dict[str, str]) -> str:
    """Three panels from one seed's runs: per-block Lipschitz estimates of
    teacher and LONDON student (``lipschitz.jsonl``), task losses of the
    three models, and the distillation losses (``losses.jsonl``)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    # (1) Lipschitz estimates
    ax = axes[0]
    lip = read_jsonl(osp.join(run_dirs['london'], 'lipschitz.jsonl'))
    if not lip:  # e.g. a run shorter than the monitor's interval
        lip = read_jsonl(osp.join(run_dirs['london'], 'losses.jsonl'))
    keys = sorted({k[len('sigma_s.'):] for r in lip for k in r
                   if k.startswith('sigma_s.')})
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, key in enumerate(keys):
        c = colors[i % len(colors)]
        for net, style in (('t', '--'), ('s', '-')):
            pts = [(r['iter'], r[f'sigma_{net}.{key}']) for r in lip
                   if f'sigma_{net}.{key}' in r]
            if pts:
                xs, ys = zip(*pts)
                xs, ys = _smooth(list(xs), list(ys), max(1, len(ys) // 40))
                group, _, idx = key.rpartition('.')
                blk = (f'{group} {int(idx) + 1}->{int(idx) + 2}'
                       if idx.isdigit() else key)
                label = f'{"teacher" if net == "t" else "student"} {blk}'
                ax.plot(xs, ys, style, color=c, lw=1.4 if net == 's' else 1,
                        label=label)
    ax.set_yscale('log')
    ax.set_xlabel('iteration')
    ax.set_ylabel('sigma (top singular value of TM)')
    ax.set_title('Per-block Lipschitz estimates, LONDON run\n'
                 '(dashed: teacher, solid: student via connector)',
                 fontsize=10)
    if keys:
        ax.legend(fontsize=7, ncol=2)
    # (2) task losses
    ax = axes[1]
    styles = dict(teacher=('0.6', 'teacher'),
                  student=('C0', 'student (baseline)'),
                  london=('C3', 'student + LONDON'))
    for role, (color, label) in styles.items():
        recs = read_jsonl(osp.join(run_dirs.get(role, ''), 'losses.jsonl'))
        pts = [(r['iter'], _task_loss(r)) for r in recs
               if _task_loss(r) is not None]
        if pts:
            xs, ys = zip(*pts)
            xs, ys = _smooth(list(xs), list(ys), max(1, len(ys) // 30))
            ax.plot(xs, ys, color=color, label=label)
    ax.set_yscale('log')
    ax.set_xlabel('iteration')
    ax.set_ylabel('task loss (moving average)')
    ax.set_title('Task loss')
    ax.legend(fontsize=8)
    # (3) distillation losses
    ax = axes[2]
    recs = read_jsonl(osp.join(run_dirs['london'], 'losses.jsonl'))
    for key, color in zip(_DISTILL_KEYS, ('C2', 'C1', 'C4')):
        pts = [(r['iter'], r[key]) for r in recs if key in r]
        if pts:
            xs, ys = zip(*pts)
            xs, ys = _smooth(list(xs), list(ys), max(1, len(ys) // 30))
            ax.plot(xs, ys, color=color, label=f'{key} (weighted)')
    pts = [(r['iter'], _task_loss(r)) for r in recs
           if _task_loss(r) is not None]
    if pts:
        xs, ys = zip(*pts)
        xs, ys = _smooth(list(xs), list(ys), max(1, len(ys) // 30))
        ax.plot(xs, ys, color='C3', ls=':', label='task loss')
    ax.set_yscale('log')
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss (moving average)')
    ax.set_title('LONDON run: distillation vs task loss')
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
