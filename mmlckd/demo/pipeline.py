"""The end-to-end demo: synthetic VOC -> teacher, baseline student and
LONDON student (identical schedules and seeds) -> VOC metrics -> tables and
plots. Entry point: ``python tools/demo.py`` (see :func:`parse_args`)."""
import argparse
import os
import os.path as osp
import platform
import sys
import time
import warnings
from typing import List, Optional

__all__ = ['parse_args', 'run', 'DEFAULT_SEEDS']

#: Seeds of the default run (students; the teacher uses the first one).
DEFAULT_SEEDS = (0, 1, 2)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='tools/demo.py',
        description='End-to-end LONDON distillation demo on a synthetic '
        'PASCAL VOC (generated locally; nothing is downloaded). Trains a '
        'teacher, a baseline student and a LONDON-distilled student with '
        'identical schedules and seeds through mmengine\'s Runner, tests '
        'them with the VOC metric, and writes results.md / results.json '
        'and a training-curve PNG to the work dir.')
    p.add_argument('--task', choices=['det', 'seg', 'both'], default='det',
                   help='det: RetinaNet + VOCMetric mAP (default); seg: FCN '
                   '+ IoUMetric mIoU; both')
    p.add_argument('--seg', action='store_const', const='seg', dest='task',
                   help='shorthand for --task seg')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: a tiny dataset, a few iterations, one '
                   'seed (well under a minute; numbers are meaningless)')
    p.add_argument('--iters', type=int, default=None,
                   help='training iterations of every model (default: 600 '
                   'det / 400 seg; --quick: 2)')
    p.add_argument('--seeds', type=int, nargs='+', default=None,
                   help='training seeds (default: 0 1 2; --quick: 0): each '
                   'seed trains a baseline and a LONDON student; the teacher '
                   'is trained once, with the first seed')
    p.add_argument('--teacher-per-seed', action='store_true',
                   help='train one teacher per seed (each LONDON student '
                   'then learns from its own seed\'s teacher); about 1.5x '
                   'the default run time')
    p.add_argument('--work-dir', default=osp.join('work_dirs', 'demo'),
                   help='output folder (default: work_dirs/demo)')
    p.add_argument('--data-seed', type=int, default=0,
                   help='seed of the synthetic dataset (default 0). Another '
                   'seed generates an independent dataset of the same kind: '
                   'a check that a result is not one dataset\'s accident')
    p.add_argument('--data-root', default=None,
                   help='synthetic VOC root (default: <work-dir>/data, '
                   '--quick: <work-dir>/data-quick, with -seed<N> appended '
                   'for --data-seed N != 0); generated if missing')
    p.add_argument('--device', choices=['cpu', 'cuda'], default='cpu',
                   help='cpu (default) or cuda if available')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (default on the CPU: the '
                   'logical cores minus one, which the data-loading worker '
                   'uses; measured on 2 cores: 1 thread trains the demo '
                   'models ~1.7x faster than 2, which contend with the '
                   'worker)')
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.iters is not None and args.iters < 1:
        p.error('--iters must be >= 1')
    if args.data_seed < 0:
        p.error('--data-seed must be >= 0')
    return args


def default_cpu_threads(workers: int = 1) -> int:
    """torch threads for CPU training next to ``workers`` data-loading
    processes (the demo configs use one): the logical cores they leave.

    OpenMP threads spin while they wait; on a 2-core machine two torch
    threads plus the worker made every step ~1.7x slower than one thread.
    """
    return max(1, (os.cpu_count() or 1) - workers)


def _banner(i: int, n: int, text: str) -> None:
    print(f'\n===== [demo {i}/{n}] {text} =====', flush=True)


def _resolve_device(requested: str) -> str:
    import torch
    if requested == 'cuda':
        if torch.cuda.is_available():
            return 'cuda'
        warnings.warn('--device cuda: CUDA is not available, using the CPU')
        return 'cpu'
    if torch.cuda.is_available():
        # tools/demo.py hides the GPUs before torch starts; reaching here
        # means CUDA was initialised earlier (e.g. run() called in-process)
        warnings.warn('--device cpu, but CUDA is visible to this process: '
                      'mmengine will use the GPU. Set CUDA_VISIBLE_DEVICES= '
                      'before starting Python to force the CPU.')
        return 'cuda'
    return 'cpu'


def run(args: argparse.Namespace) -> dict:
    """Run the demo described by ``args`` (see :func:`parse_args`)."""
    t_start = time.perf_counter()
    import torch

    from mmlckd.datasets import DatasetExistsError, make_synthetic_voc
    from .report import plot_task, summarize_task, task_markdown, \
        write_results
    from .runner import build_cfg, model_complexity, train_and_test
    from .tasks import DATA_FULL, DATA_QUICK, ROLE_NAMES, ROLES, TASKS

    device = _resolve_device(args.device)
    threads = args.threads
    if threads is None and device == 'cpu':
        threads = default_cpu_threads()
    if threads:
        torch.set_num_threads(threads)
    device_desc = (torch.cuda.get_device_name(0) if device == 'cuda' else
                   f'CPU ({os.cpu_count()} cores, {platform.machine()})')
    tasks = ['det', 'seg'] if args.task == 'both' else [args.task]
    seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else
                               ((0, ) if args.quick else DEFAULT_SEEDS)))
    work_dir = osp.abspath(args.work_dir)
    data_args = dict(DATA_QUICK if args.quick else DATA_FULL,
                     seed=args.data_seed)
    default_root = 'data-quick' if args.quick else 'data'
    if args.data_seed:
        default_root += f'-seed{args.data_seed}'
    data_root = osp.abspath(args.data_root
                            or osp.join(work_dir, default_root))
    os.makedirs(work_dir, exist_ok=True)

    teacher_seeds = seeds if args.teacher_per_seed else seeds[:1]
    n_stages = 1 + len(tasks) * (len(teacher_seeds) + 2 * len(seeds)) + 1
    stage = 1
    _banner(stage, n_stages,
            f'synthetic VOC data -> {data_root} (SYNTHETIC, not real VOC)')
    try:
        summary = make_synthetic_voc(data_root, **data_args)
    except DatasetExistsError as err:
        # The default root belongs to the demo: regenerate data made with
        # other arguments (make_synthetic_voc still refuses to delete a
        # VOCdevkit it did not generate). A --data-root is never overwritten.
        if args.data_root is not None:
            raise
        print(f'[demo] {err}\n[demo] regenerating the demo data', flush=True)
        summary = make_synthetic_voc(data_root, overwrite=True, **data_args)
    print(f'[demo] {"reused" if summary["reused"] else "generated"} '
          f'{summary["num_images"]} images ({len(summary["classes"])} '
          f'classes) in {summary["devkit"]}', flush=True)

    results = dict(
        synthetic_data=True,
        note='All numbers are measured on a synthetic VOC-format dataset '
        'generated by mmlckd.datasets.make_synthetic_voc, not on real '
        'PASCAL VOC.',
        command=' '.join(['python tools/demo.py'] +
                         getattr(args, 'argv', sys.argv[1:])),
        quick=bool(args.quick),
        device=device_desc,
        torch_threads=torch.get_num_threads(),
        seeds=seeds,
        teacher_seeds=teacher_seeds,
        data_root=data_root,
        data_args={k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in data_args.items()},
        tasks={})
    md_sections = []
    for task_name in tasks:
        task = TASKS[task_name]
        iters = args.iters or (task.quick_iters if args.quick else
                               task.iters)
        log_interval = 1 if iters <= 20 else 25
        runs = {role: [] for role in ROLES}
        teacher_ckpts = {}
        run_dirs = {}
        extra_params = None
        loss_weights = None
        for seed in seeds:
            for role in ROLES:
                if role == 'teacher' and seed not in teacher_seeds:
                    continue
                stage += 1
                t_seed = seed if seed in teacher_ckpts else teacher_seeds[0]
                what = ROLE_NAMES[role] + (
                    f' (teacher of seed {t_seed})' if role == 'london' else '')
                _banner(stage, n_stages,
                        f'{task_name} | seed {seed} | {what}: train '
                        f'{iters} iters + test')
                run_dir = osp.join(work_dir, task_name, f'seed{seed}', role)
                cfg = build_cfg(
                    task, role, seed=seed, iters=iters, work_dir=run_dir,
                    data_root=data_root,
                    teacher_ckpt=teacher_ckpts.get(t_seed),
                    log_interval=log_interval, quick=args.quick)
                if role == 'london':
                    m = cfg.model
                    loss_weights = dict(
                        lipschitz=m.lipschitz_loss and
                        m.lipschitz_loss.get('loss_weight'),
                        feature=m.feature_loss and
                        m.feature_loss.get('loss_weight'))
                out = train_and_test(cfg)
                metric = out['metrics'].get(task.metric_key)
                if metric is None:
                    raise KeyError(f'{task.metric_key!r} not in the test '
                                   f'metrics {sorted(out["metrics"])}')
                out['metric'] = float(metric) * task.metric_scale
                out['seed'] = seed
                if role == 'london':
                    out['teacher_seed'] = t_seed
                    extra_params = out.pop('connector_params', None)
                else:
                    out.pop('connector_params', None)
                runs[role].append(out)
                if role == 'teacher':
                    if out['checkpoint'] is None:
                        raise FileNotFoundError(
                            f'no teacher checkpoint in {run_dir}')
                    teacher_ckpts[seed] = out['checkpoint']
                if seed == seeds[0]:
                    run_dirs[role] = run_dir
                print(f'[demo] {task_name} seed {seed} {ROLE_NAMES[role]}: '
                      f'{task.metric_name} = {out["metric"]:.2f}, train '
                      f'{out["train_time_s"]:.0f} s, test '
                      f'{out["test_time_s"]:.1f} s', flush=True)
        complexity = {role: model_complexity(task, role) for role in ROLES}
        complexity['london']['training_extra_params'] = extra_params
        n_train = _train_images(task_name, summary)
        info = dict(
            seeds=seeds,
            teacher_seeds=teacher_seeds,
            iters=iters,
            batch_size=cfg.train_dataloader.batch_size,
            device=device_desc,
            input_size=list(task.input_size),
            loss_weights=loss_weights,
            data=dict(
                synthetic=True,
                generator='mmlckd.datasets.make_synthetic_voc',
                seed=args.data_seed,
                classes=list(summary['classes']),
                train_images=n_train[0],
                test_images=n_train[1],
                img_size=f'{data_args["img_size"]["min"]}-'
                f'{data_args["img_size"]["max"]}'))
        res = summarize_task(task_name, runs, complexity, info)
        plot_path = osp.join(work_dir, f'{task_name}_training.png')
        try:
            res['plot'] = plot_task(
                plot_path, f'{task.title} -- seed {seeds[0]}, SYNTHETIC '
                'data', run_dirs)
        except Exception as err:  # a plot must not lose the results
            print(f'[demo] plotting failed: {err!r}', flush=True)
            res['plot'] = None
        results['tasks'][task_name] = res
        md_sections.append(task_markdown(res))
    stage += 1
    _banner(stage, n_stages, 'results')
    results['total_wall_time_s'] = time.perf_counter() - t_start
    paths = write_results(work_dir, results)
    print('\n' + '\n\n'.join(md_sections), flush=True)
    print(f'\n[demo] total wall time {results["total_wall_time_s"]:.0f} s; '
          f'wrote {paths["markdown"]}, {paths["json"]}' + ''.join(
              f', {r["plot"]}' for r in results['tasks'].values()
              if r.get('plot')), flush=True)
    return results


def _train_images(task_name: str, summary: dict) -> tuple:
    v07, v12 = summary['VOC2007'], summary['VOC2012']
    if task_name == 'det':
        return (v07['main']['trainval'] + v12['main']['trainval'],
                v07['main']['test'])
    seg = v12['segmentation']
    return seg['train'] + seg['aug'], seg['val']
