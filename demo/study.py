"""The demo's experiment: regimes x ablation rows x student seeds x data
seeds, paired against the baseline student of the same seed.

Regimes:

* ``det``: detection, teacher and students trained on the same images;
* ``det-scarce``: detection, the teacher trained on all training images,
  the students given only ``label_fraction`` of them (the common "fine-tune
  a small detector with a big teacher" case);
* ``seg``: segmentation (a pixel metric, less noisy than mAP).

Rows: ``baseline`` (the student alone), ``ofd`` (feature mimic only),
``london`` (Lipschitz term only) and ``london+ofd`` (both; the distiller's
defaults). Every distilled row uses the distiller's default, automatically
balanced loss weights.

Each run is one process of a small pool (one torch thread each), and its
result is kept as ``result.json`` in its run folder, so an interrupted study
resumes where it stopped.
"""
import copy
import json
import math
import os.path as osp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Dict, List, Optional, Sequence

from mmlckd.checkpoint import atomic_write
from mmlckd.models.distillers.term_runner import TASK_AWARE
from mmlckd.testing import single_process_loaders

__all__ = ['REGIMES', 'ROWS', 'Job', 'job_iters', 'plan_jobs', 'plotted_jobs',
           'run_jobs', 'finished', 'summarize', 'paired']

REGIMES = {
    'det': dict(task='det', label_fraction=1.0,
                title='(a) detection, same images for teacher and student'),
    'det-scarce': dict(task='det', label_fraction=0.25,
                       title='(b) detection, the student has 25% of the '
                       'labelled images'),
    'seg': dict(task='seg', label_fraction=1.0,
                title='(c) segmentation, same images'),
}

#: the pluggable terms of the task-aware rows (mmlckd.models.terms)
NECK = dict(neck=dict(type='mmlckd.NeckPKDTerm'))
HEAD_LIP = dict(head_lip=dict(type='mmlckd.HeadLipschitzTerm'))


def preds(distance: str) -> dict:
    """Prediction-level KD on the head's classifier, with ``distance``."""
    return dict(preds=dict(type='mmlckd.PredictionKDTerm',
                           distance=distance))


#: row -> changes to the distiller config (None: the plain student). Every
#: distilled row starts from the distiller's backbone terms (LONDON + OFD)
#: unless it removes them; ``terms`` rows add the task-aware terms.
ROWS = {
    'baseline': None,
    # the distiller's defaults, nothing said (task-aware terms included)
    'default': dict(),
    # the same minus every Lipschitz term (the backbone's and the head's)
    'default-no-lip': dict(lipschitz_loss=None, terms=dict(
        (name, cfg) for name, (_, cfg) in TASK_AWARE.items()
        if 'Lipschitz' not in cfg['type'])),
    'ofd': dict(lipschitz_loss=None, terms=None),
    'london': dict(feature_loss=None, terms=None),
    'london+ofd': dict(terms=None),
    # the alternative student wiring, compared on the selection data seed
    'london+ofd-connector': dict(lipschitz_on='connector', terms=None),
    '+neck': dict(terms=NECK),
    '+kd-kl': dict(terms=preds('kl')),
    '+kd-logit': dict(terms=preds('logit')),
    '+kd-corr': dict(terms=preds('correlation')),
    '+head-lip': dict(terms=HEAD_LIP),
    # the default, plus the training images the regime leaves without
    # labels as unlabelled images (issue 18; UNLABELLED_ROWS)
    'default+unlabelled': dict(),
    # the student alone on every label (ALL_LABELS_ROWS): the reference
    # point of the scarce-label regime
    'baseline-all-labels': None,
}
#: rows that distil on the training images without labels too: those the
#: regime's ``label_fraction`` leaves out, through ``unlabelled_images``
#: (mmlckd.datasets), as many unlabelled as labelled images per batch
UNLABELLED_ROWS = ('default+unlabelled', )
#: rows trained on every label whatever the regime's ``label_fraction``
ALL_LABELS_ROWS = ('baseline-all-labels', )
ROW_NAMES = {
    'baseline': 'student alone',
    'default': 'default (task-aware)',
    'default-no-lip': 'default minus every Lipschitz term',
    'ofd': '+ OFD only',
    'london': '+ LONDON term only',
    'london+ofd': '+ LONDON + OFD (backbone; the old default)',
    'london+ofd-connector': '+ LONDON + OFD, connector wiring',
    '+neck': 'backbone + neck PKD',
    '+kd-kl': 'backbone + prediction KD (KL)',
    '+kd-logit': 'backbone + prediction KD (logit matching)',
    '+kd-corr': 'backbone + prediction KD (correlation)',
    '+head-lip': 'backbone + head Lipschitz',
    'default+unlabelled': 'default + the unlabelled rest of the images',
    'baseline-all-labels': 'student alone on every label',
}
#: rows that need a neck (FPN); a segmentation regime skips them
NEEDS_NECK = ('+neck',)


@dataclass(frozen=True)
class Job:
    """One training run: a teacher (``row is None``) or a student."""
    task: str
    data_seed: int
    seed: int
    regime: Optional[str] = None
    row: Optional[str] = None

    @property
    def name(self) -> str:
        if self.row is None:
            return f'{self.task} teacher (data {self.data_seed})'
        return (f'{self.regime} {self.row} seed {self.seed} '
                f'(data {self.data_seed})')

    def run_dir(self, work_dir: str) -> str:
        base = osp.join(work_dir, f'data{self.data_seed}')
        if self.row is None:
            return osp.join(base, f'{self.task}-teacher')
        return osp.join(base, self.regime, self.row, f'seed{self.seed}')


def job_iters(job: Job, opts: dict) -> int:
    """The schedule of ``job``: a teacher's of its task
    (``opts['teacher_iters']``), a student's of its regime
    (``opts['iters']``, keyed by regime; a task's key serves every regime
    of that task that has no key of its own)."""
    if job.row is None:
        return opts['teacher_iters'][job.task]
    iters = opts['iters']
    return iters[job.regime] if job.regime in iters else iters[job.task]


def job_role(job: Job) -> str:
    """The config role of ``job``: ``'teacher'``, ``'student'`` (alone) or
    ``'london'`` (distilled)."""
    if job.row is None:
        return 'teacher'
    return 'student' if ROWS[job.row] is None else 'london'


def plan_jobs(regimes: Sequence[str], rows, seeds: Sequence[int],
              data_seeds: Sequence[int]) -> List[List[Job]]:
    """Two phases: the teachers, then every student run, regime by regime
    (in the order given) and data seed by data seed. ``rows`` is a list, or
    a dict ``regime -> list``."""
    def rows_of(regime):
        return rows[regime] if isinstance(rows, dict) else rows

    teachers, students = [], []
    for data_seed in data_seeds:
        for task in dict.fromkeys(REGIMES[r]['task'] for r in regimes):
            if any(ROWS[row] is not None for r in regimes
                   if REGIMES[r]['task'] == task for row in rows_of(r)):
                teachers.append(Job(task, data_seed, 0))
    for regime in regimes:
        for data_seed in data_seeds:
            for seed in seeds:
                for row in rows_of(regime):
                    if row in NEEDS_NECK and REGIMES[regime]['task'] == 'seg':
                        continue  # the segmentation demo model has no neck
                    if row in UNLABELLED_ROWS + ALL_LABELS_ROWS and \
                            REGIMES[regime]['label_fraction'] >= 1.0:
                        continue  # every image has its label there
                    students.append(Job(REGIMES[regime]['task'], data_seed,
                                        seed, regime, row))
    return [teachers, students]


#: the distilled row a regime's training plot shows: the first of these
#: that the regime runs
PLOT_ROWS = ('default', 'london+ofd', 'london', 'ofd')


def plotted_row(rows: Sequence[str]) -> Optional[str]:
    """The row of ``rows`` that the regime's training plot shows."""
    return next((r for r in PLOT_ROWS if r in rows), None)


def plotted_jobs(regimes: Sequence[str], rows, seeds: Sequence[int],
                 data_seeds: Sequence[int]) -> List[Job]:
    """The distilled runs the training plots show (one a regime: its
    :func:`plotted_row`, the first data seed, the lowest student seed);
    ``rows`` as for :func:`plan_jobs`."""
    out = []
    for regime in regimes:
        row = plotted_row(rows[regime] if isinstance(rows, dict) else rows)
        if row is not None:
            out.append(Job(REGIMES[regime]['task'], data_seeds[0],
                           min(seeds), regime, row))
    return out


# ------------------------------------------------------------ one run
def _subset_train_data(cfg, fraction: float, data_root: str) -> int:
    """Keep the first ``fraction`` of every training image list (the lists
    are in random order). Returns the number of images kept."""
    if fraction >= 1.0:
        return -1
    datasets = cfg.train_dataloader.dataset
    datasets = datasets.datasets if datasets.get('type') == 'ConcatDataset' \
        else [datasets]
    kept = 0
    for ds in datasets:
        root = ds.get('data_root') or data_root
        with open(osp.join(root, ds.ann_file), encoding='utf-8') as f:
            num = sum(1 for line in f if line.strip())
        ds.indices = max(1, int(round(num * fraction)))
        kept += ds.indices
    return kept


def _unlabelled_rest(cfg, data_root: str, out_file: str) -> int:
    """Write the images that :func:`_subset_train_data` left out of every
    training list (a VOC list: ``<sub_data_root>/JPEGImages/<id>.jpg``)
    to ``out_file``, one absolute path a line; returns their number."""
    import os
    datasets = cfg.train_dataloader.dataset
    datasets = datasets.datasets if datasets.get('type') == 'ConcatDataset' \
        else [datasets]
    paths = []
    for ds in datasets:
        root = ds.get('data_root') or data_root
        with open(osp.join(root, ds.ann_file), encoding='utf-8') as f:
            ids = [line.split()[0] for line in f if line.strip()]
        kept = ds.get('indices')
        if not isinstance(kept, int):
            raise ValueError('the unlabelled rows need a label fraction '
                             'below 1 (a scarce-label regime)')
        sub = ds.get('data_prefix', {}).get('sub_data_root', '')
        paths += [osp.abspath(osp.join(root, sub, 'JPEGImages', i + '.jpg'))
                  for i in ids[kept:]]
    os.makedirs(osp.dirname(out_file), exist_ok=True)
    with open(out_file, 'w', encoding='utf-8') as f:
        f.write('\n'.join(paths) + '\n')
    return len(paths)


def _build_job_cfg(job: Job, opts: dict, teacher_ckpt: Optional[str]):
    """The run's config and the number of training images it keeps (-1:
    all)."""
    from .runner import build_cfg
    from .tasks import TASKS
    iters, role = job_iters(job, opts), job_role(job)
    cfg = build_cfg(TASKS[job.task], role, seed=job.seed, iters=iters,
                    work_dir=job.run_dir(opts['work_dir']),
                    data_root=opts['data_roots'][job.data_seed],
                    teacher_ckpt=teacher_ckpt,
                    log_interval=opts['log_interval'], quick=opts['quick'])
    single_process_loaders(cfg)  # one process = one core
    if role == 'london':
        cfg.model.update(copy.deepcopy(ROWS[job.row]))
        terms = cfg.model.get('terms')
        if job.task == 'seg' and terms:  # no neck in the segmentor
            cfg.model.terms = {k: v for k, v in terms.items()
                               if k != 'neck'}
        # the gradient shares are measured (a backward per term, every
        # log_interval-th step; they change no weight) only in the runs
        # the training plots show
        plotted = job in opts.get('plotted', ())
        cfg.model.balance = dict(
            log_interval=opts['log_interval'] if plotted else 0)
        if opts['quick']:  # calibrate on the first of its 2 steps
            cfg.model.balance['iters'] = 1
    if role == 'teacher':
        from .curve import with_validation
        with_validation(cfg, iters)  # the teacher's learning curve
        return cfg, -1
    cfg.train_dataloader.batch_size = opts['student_batch']
    fraction = 1.0 if job.row in ALL_LABELS_ROWS else \
        REGIMES[job.regime]['label_fraction']
    kept = _subset_train_data(cfg, fraction, cfg.data_root)
    if job.row in UNLABELLED_ROWS:
        from mmlckd.datasets import add_unlabelled_images
        path = osp.join(cfg.work_dir, 'unlabelled_images.txt')
        _unlabelled_rest(cfg, cfg.data_root, path)
        cfg.unlabelled_images = dict(img_list=path, ratio=1.0)
        add_unlabelled_images(cfg)
    return cfg, kept


def _run_one(job: Job, opts: dict, teacher_ckpt: Optional[str]) -> dict:
    """Train and test one job in this process; returns its result."""
    import torch
    torch.set_num_threads(1)
    from .curve import ValCurveHook
    from .metrics import KeepTestResultsHook, bootstrap_se
    from .runner import train_and_test
    from .tasks import TASKS
    cfg, kept = _build_job_cfg(job, opts, teacher_ckpt)
    keep = KeepTestResultsHook()
    curve = ValCurveHook()
    out = train_and_test(cfg, extra_hooks=[keep, curve])
    task = TASKS[job.task]
    out['curve'] = [dict(iter=p['iter'], metric=p['metrics'][
        task.metric_key] * task.metric_scale) for p in curve.points]
    out['metric'] = float(out['metrics'][task.metric_key]) * \
        task.metric_scale
    out['metric_bootstrap_se'] = bootstrap_se(job.task, keep.results,
                                              seed=job.seed) * \
        task.metric_scale
    out['train_images'] = kept
    out['job'] = asdict(job)
    return out


def _worker(job: Job, opts: dict, teacher_ckpt: Optional[str]) -> dict:
    path = osp.join(job.run_dir(opts['work_dir']), 'result.json')
    if osp.isfile(path):
        with open(path, encoding='utf-8') as f:
            done = json.load(f)
        want = job_iters(job, opts)
        if done.get('train_iters') != want:
            raise ValueError(
                f'{path} holds a run of {done.get("train_iters")} '
                f'iterations, but this study asks for {want}; give another '
                '--work-dir (or move that folder away) instead of mixing '
                'schedules')
        return done
    out = _run_one(job, opts, teacher_ckpt)
    text = json.dumps(out, indent=1).encode()
    atomic_write(path, lambda f: f.write(text))
    return out


def finished(phases: List[List[Job]], opts: dict) -> dict:
    """``{job: result}`` of the jobs of ``phases`` that have finished (a
    student only with its teacher); trains nothing."""
    results: Dict[Job, dict] = {}
    for phase in phases:
        for job in phase:
            path = osp.join(job.run_dir(opts['work_dir']), 'result.json')
            teacher = Job(job.task, job.data_seed, 0)
            if not osp.isfile(path) or (
                    job.row is not None and ROWS[job.row] is not None and
                    teacher not in results):
                continue
            results[job] = _worker(job, opts, None)
    return results


#: seconds per 1000 training iterations of one run on one core (the
#: timed study of 2026-12-07, two runs side by side on the 2-core
#: machine; docs/demo/study_results.md): only the order in which
#: :func:`run_jobs` starts the runs depends on them
COST_PER_1K = {('det', 'teacher'): 210, ('seg', 'teacher'): 467,
               ('det', 'student'): 64, ('seg', 'student'): 95,
               ('det', 'london'): 118, ('seg', 'london'): 182}


def expected_cost(job: Job, opts: dict) -> float:
    """The expected training seconds of ``job`` (:data:`COST_PER_1K`)."""
    return COST_PER_1K[(job.task, job_role(job))] * \
        job_iters(job, opts) / 1000


def start_order(phase: List[Job], opts: dict) -> List[Job]:
    """The jobs of ``phase`` in the order :func:`run_jobs` starts them:
    longest first (:func:`expected_cost`)."""
    return sorted(phase, key=lambda j: -expected_cost(j, opts))


def run_jobs(phases: List[List[Job]], opts: dict, jobs: int = 2) -> dict:
    """Run the phases in order, ``jobs`` processes at a time; returns
    ``{job: result}``. Finished jobs (``result.json``) are not rerun.
    Within a phase the longest runs start first (:func:`expected_cost`:
    a distilled run is about twice a student alone, the teacher's
    forward), so the short ones fill the gaps at the end."""
    results: Dict[Job, dict] = {}
    ctx = get_context('spawn')
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for phase in phases:
            futures = {}
            for job in start_order(phase, opts):
                ckpt = None
                if job.row is not None and ROWS[job.row] is not None:
                    teacher = Job(job.task, job.data_seed, 0)
                    ckpt = results[teacher]['checkpoint']
                futures[job] = pool.submit(_worker, job, opts, ckpt)
            for job, fut in futures.items():
                t0 = time.perf_counter()
                results[job] = fut.result()
                r = results[job]
                print(f'[demo] {job.name}: {r["metric"]:.2f} '
                      f'(train {r["train_time_s"]:.0f} s; waited '
                      f'{time.perf_counter() - t0:.0f} s)', flush=True)
    return results


# ------------------------------------------------------------ statistics
def paired(gains: Sequence[float]) -> dict:
    """Mean, standard error and n of paired differences."""
    vals = [float(g) for g in gains]
    n = len(vals)
    mean = sum(vals) / n if n else float('nan')
    se = math.sqrt(sum((v - mean)**2 for v in vals) / (n - 1) / n) \
        if n > 1 else float('nan')
    return dict(mean=mean, se=se, n=n, per_seed=vals,
                gain=bool(n > 1 and mean > 2 * se),
                loss=bool(n > 1 and mean < -2 * se))


def summarize(results: Dict[Job, dict]) -> dict:
    """Per (regime, data seed): every row's metric and its paired
    difference to the baseline of the same student seed."""
    table: Dict[str, dict] = {}
    teachers = {}
    for job, r in results.items():
        if job.row is None:
            teachers[(job.task, job.data_seed)] = r['metric']
            continue
        cell = table.setdefault(f'{job.regime}|{job.data_seed}', dict(
            regime=job.regime, data_seed=job.data_seed, rows={}))
        cell['rows'].setdefault(job.row, {})[job.seed] = r
    for cell in table.values():
        task = REGIMES[cell['regime']]['task']
        cell['teacher'] = teachers.get((task, cell['data_seed']))
        base = cell['rows'].get('baseline', {})
        raw = dict(cell['rows'])
        for row, runs in cell['rows'].items():
            metrics = [runs[s]['metric'] for s in sorted(runs)]
            cell['rows'][row] = dict(
                metric=paired(metrics),
                bootstrap_se=sum(runs[s]['metric_bootstrap_se']
                                 for s in runs) / len(runs),
                train_images=next(iter(runs.values()))['train_images'],
                vs_baseline=None if row == 'baseline' else paired(
                    [runs[s]['metric'] - base[s]['metric']
                     for s in sorted(runs) if s in base]),
                run_dirs={s: runs[s]['work_dir'] for s in sorted(runs)})
        cell['contrasts'] = contrasts(raw)
    return table


#: paired contrasts between distilled rows, ``(row, reference row)``: what
#: each term adds to the old default, and what the Lipschitz terms add to
#: the default
CONTRASTS = [('default', 'london+ofd'), ('default', 'default-no-lip'),
             ('default+unlabelled', 'default')] + [
    (row, 'london+ofd') for row in ('+neck', '+kd-kl', '+kd-logit',
                                    '+kd-corr', '+head-lip')]


def contrasts(rows: Dict[str, Dict[int, dict]]) -> Dict[str, dict]:
    """``'<row> - <reference>'`` -> paired difference over the student
    seeds both rows have, for the :data:`CONTRASTS` present in ``rows``
    (``row -> {seed: result}``)."""
    out = {}
    for row, ref in CONTRASTS:
        if row in rows and ref in rows:
            seeds = sorted(set(rows[row]) & set(rows[ref]))
            if seeds:
                out[f'{row} - {ref}'] = paired(
                    [rows[row][s]['metric'] - rows[ref][s]['metric']
                     for s in seeds])
    share = label_gap_share(rows)
    if share is not None:
        out[GAP_SHARE] = share
    return out


GAP_SHARE = ('share of the labels gap recovered by the unlabelled images '
             '(%)')


def label_gap_share(rows: Dict[str, Dict[int, dict]]) -> Optional[dict]:
    """Per student seed, ``100 * (default+unlabelled - default) /
    (alone on every label - alone)``: the share of the gap between the
    scarce and the full labels that the unlabelled images recover, paired
    over the seeds all four rows have (None without them)."""
    need = ('default+unlabelled', 'default', 'baseline-all-labels',
            'baseline')
    if not all(r in rows for r in need):
        return None
    seeds = sorted(set.intersection(*(set(rows[r]) for r in need)))
    m = {r: {s: rows[r][s]['metric'] for s in seeds} for r in need}
    shares = [100 * (m['default+unlabelled'][s] - m['default'][s]) /
              (m['baseline-all-labels'][s] - m['baseline'][s])
              for s in seeds
              if m['baseline-all-labels'][s] != m['baseline'][s]]
    return paired(shares) if shares else None
