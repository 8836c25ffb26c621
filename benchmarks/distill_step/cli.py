"""The command line of ``benchmarks/distill_step_bench.py``: arguments,
then data, memory children, timings, sweep, in that order."""
import argparse
import importlib
import json
import os
import sys
import tempfile
import warnings

import torch
from mmengine.logging import MMLogger

from .common.clock import env_info
from .common.configs import MODEL_SPECS, build_cfgs, default_cfg
from .common.data import make_batches, make_voc
from .memory import memory_model, warm_up_runtime
from .report import print_model, print_summary, print_targets
from .schedule import family_ratios, schedule_iters
from .steps import bench_model
from .sweep import print_sweep, sweep


def parse_args(argv=None, description=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--quick', action='store_true',
                   help='CI mode: tiny widths, 64 px, 1 step, all paths')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--models', nargs='+', default=list(MODEL_SPECS),
                   choices=list(MODEL_SPECS))
    p.add_argument('--size', type=int, default=None,
                   help='image size of the main table (default: 320 on '
                   'CPU, 512 on GPU, 64 with --quick)')
    p.add_argument('--batch', type=int, default=None,
                   help='batch size of the main table (default 2)')
    p.add_argument('--steps', type=int, default=None,
                   help='timed rounds per variant (default 5)')
    p.add_argument('--warmup', type=int, default=None,
                   help='untimed rounds first, after the balancer\'s '
                   'calibration (default 2)')
    p.add_argument('--no-alone', action='store_true',
                   help='skip the variants with one term alone')
    p.add_argument('--recipe', action='store_true',
                   help="also time the recipe's distiller (explicit "
                   'weights), as the tables before the balancer')
    p.add_argument('--sizes', type=int, nargs='+', default=None,
                   help='sweep image sizes (default 128 256 384 512 on '
                   'CPU, 256 512 1024 on GPU)')
    p.add_argument('--batches', type=int, nargs='+', default=None,
                   help='sweep batch sizes (default 1 2 4 8)')
    p.add_argument('--sweep-model', default='retinanet',
                   choices=list(MODEL_SPECS))
    p.add_argument('--sweep-steps', type=int, default=None)
    p.add_argument('--sweep-warmup', type=int, default=None)
    p.add_argument('--no-sweep', action='store_true')
    p.add_argument('--sweep-only', action='store_true',
                   help='skip the per-model table')
    p.add_argument('--no-memory', action='store_true')
    p.add_argument('--malloc-default', action='store_true',
                   help="keep glibc's adaptive mmap threshold in the memory "
                   'children (RSS then includes heap fragmentation)')
    p.add_argument('--mem-steps', type=int, default=None,
                   help='steps per phase in the memory measurement '
                   '(default 2)')
    p.add_argument('--n-batches', type=int, default=2,
                   help='distinct batches cycled in the main table')
    p.add_argument('--amp', action='store_true',
                   help='autocast (fp16 on GPU, bf16 on CPU) for student '
                   'and teacher; GradScaler on GPU')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads, e.g. 1 or 2 (default: all '
                   'usable cores; 1 with --quick, whose tiny ops only lose '
                   'with more)')
    p.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                   help='clock of the printed ratios and shares')
    p.add_argument('--guard-ablation', action='store_true',
                   help='also time the steady step with nan_guard off')
    p.add_argument('--profile', action='store_true',
                   help='profile one steady step per model (clone cost)')
    p.add_argument('--verbose', action='store_true')
    p.add_argument('--data-root', default=None,
                   help='where to generate the synthetic VOC (default: a '
                   'temporary folder, removed at the end)')
    p.add_argument('--json', default=None, help='save the results here')
    return _with_defaults(p.parse_args(argv))


def _with_defaults(args):
    """The defaults that depend on ``--device`` and ``--quick``."""
    gpu = args.device == 'cuda'
    defaults = dict(size=320, batch=2, steps=5, warmup=2,
                    sizes=[256, 512, 1024] if gpu else [128, 256, 384, 512],
                    batches=[1, 2, 4, 8], sweep_steps=3, sweep_warmup=1,
                    mem_steps=2)
    if gpu:
        defaults['size'] = 512
    if args.quick:
        defaults.update(size=64, batch=2, steps=1, warmup=1, sizes=[64],
                        batches=[1, 2], sweep_steps=1, sweep_warmup=0,
                        mem_steps=1)
        if args.n_batches == 2:
            args.n_batches = 1
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if gpu and args.clock == 'cpu':
        print('--clock cpu is meaningless on GPU: using the wall clock')
        args.clock = 'wall'
    return args


def prepare_model(name, args, devkit, device) -> dict:
    """Configs, schedule and preprocessed batches of one model (no model
    built)."""
    # the model registries import their packages lazily, at the first
    # build: import them here, so that no memory child counts the import
    importlib.import_module(MODEL_SPECS[name]['scope'] + '.models')
    recipe, ds_cfg, pre_cfg, source, cfg = build_cfgs(name, args.size,
                                                      args.quick)
    batches = make_batches(name, ds_cfg, pre_cfg, devkit, args.size,
                           args.batch, args.n_batches, device)
    res = dict(model=name, title=MODEL_SPECS[name]['title'], config=source,
               size=args.size, batch=args.batch, warmup=args.warmup,
               steps=args.steps, amp=args.amp, schedule=schedule_iters(cfg))
    return dict(name=name, dcfg=default_cfg(recipe), recipe_dcfg=recipe,
                batches=batches, res=res, schedule=res['schedule'])


def run_all(args, devkit, device, env, out) -> None:
    """All data first, then every memory measurement (children forked from
    a process that has built no model yet, so that they all start from the
    same heap), then the timings; results are added to ``out``."""
    preps = [] if args.sweep_only else [
        prepare_model(name, args, devkit, device) for name in args.models]
    if preps and not args.no_memory:
        for name in args.models:
            warm_up_runtime(name, devkit, device, default_cfg)
        for prep in preps:
            memory_model(prep, args, device)
    for prep in preps:
        print(f"\n== {prep['name']} ...", flush=True)
        res = bench_model(prep, args, device)
        res['ratios'] = family_ratios(res, args.clock)
        out['models'].append(res)
        print_model(res, args, env)
        sys.stdout.flush()
    if preps:
        print_summary(out, args)
        print_targets(out, args)
    if not args.no_sweep:
        print(f"\n== sweep {args.sweep_model} ...", flush=True)
        sw = sweep(args, devkit, device)
        print_sweep(sw, args)
        out['sweep'] = sw


def main(argv=None, description=None) -> dict:
    args = parse_args(argv, description)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: CUDA is not available')
    threads = args.threads or (1 if args.quick else
                               len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    warnings.filterwarnings('ignore')
    # the current logger of the models built here: their INFO lines (terms
    # found, balancer weights) only with --verbose
    MMLogger.get_instance('distill_step_bench', log_level='INFO' if
                          args.verbose else 'WARNING')
    env = env_info(device, threads)
    print(f"torch {env['torch']} | {env['device_name']} | threads {threads}"
          f" of {env['cpus']} CPUs | load average {env['loadavg_start']}"
          f" | clock {args.clock}", flush=True)
    n_img = max(args.batch * args.n_batches,
                max(args.batches) if not args.no_sweep else 0, 4)
    out = dict(env=env, args=vars(args), models=[])
    with tempfile.TemporaryDirectory(prefix='mmlckd_bench_') as tmp:
        devkit = make_voc(args.data_root or tmp, n_img, dict(
            min=64, max=96) if args.quick else dict(min=333, max=500))
        run_all(args, devkit, device, env, out)
    env['loadavg_end'] = list(os.getloadavg())
    print(f"\nload average at the end: {env['loadavg_end']}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1, default=str)
        print(f'results saved to {args.json}')
    return out
