"""The batch / image-size sweep: the share of the steady distiller step
spent in the distillation terms and in the Lipschitz term (warm and cold),
for one family's default distiller."""
import gc
import math

import torch

from .common.bench import DistillerBench
from .common.clock import CLOCKS, medians, run_interleaved, timed
from .common.configs import MODEL_SPECS, build_cfgs, default_cfg
from .common.data import make_batches


def _sweep_point(bench, batches, args, device) -> dict:
    # cold start: the first step after a reset of the vectors
    cold = bench.prepare_lipschitz(batches[0], cold=True)
    cold_t = timed(cold, device) if cold else (math.nan, math.nan)
    modes = {'distill': bench.phase_mode('steady'),
             'terms': bench.prepare_terms}
    if bench.distiller.lipschitz_loss is not None:
        modes['lipschitz'] = bench.prepare_lipschitz
    t = medians(run_interleaved(modes, batches, args.sweep_warmup,
                                args.sweep_steps, device))
    t['lipschitz_cold'] = dict(zip(CLOCKS, cold_t))
    return t


def sweep(args, devkit, device) -> dict:
    name = args.sweep_model
    rows = []
    bench = None
    for size in args.sizes:
        dcfg, ds_cfg, pre_cfg, _, _ = build_cfgs(name, size, args.quick)
        for batch in args.batches:
            batches = make_batches(name, ds_cfg, pre_cfg, devkit, size, batch,
                                   1, device)
            try:
                if bench is None:
                    bench = DistillerBench(name, default_cfg(dcfg), device,
                                           args.amp)
                    bench.calibrate(batches)
                t = _sweep_point(bench, batches, args, device)
            except (RuntimeError, ValueError) as err:  # e.g. out of memory,
                # or batch 1 with BN over 1x1 maps (DeepLabV3+ image pool)
                print(f'   B={batch:<3d} {size:>4d}px  skipped: '
                      f'{str(err).splitlines()[0][:100]}', flush=True)
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
                continue
            rows.append(dict(batch=batch, size=size, times=t))
            c = args.clock
            d = t['distill'][c]
            print(f"   B={batch:<3d} {size:>4d}px  step {d * 1e3:9.1f} ms  "
                  f"terms {100 * t['terms'][c] / d:5.1f}%  Lipschitz warm "
                  f"{100 * t.get('lipschitz', {}).get(c, math.nan) / d:5.1f}%"
                  f"  cold {100 * t['lipschitz_cold'][c] / d:5.1f}%",
                  flush=True)
    bench = None
    gc.collect()
    return dict(model=name, rows=rows)


def print_sweep(sw, args) -> None:
    c = args.clock
    print(f"\n== scaling sweep: {MODEL_SPECS[sw['model']]['title']}, "
          f"default distiller, steady train step ({c} clock, medians of "
          f"{args.sweep_steps} after {args.sweep_warmup} warm-up)")
    print(f"   {'batch':>5}{'size':>6}{'step ms':>10}{'terms ms':>10}"
          f"{'terms %':>9}{'Lip ms':>9}{'Lip %':>7}{'Lip cold ms':>12}"
          f"{'cold %':>8}")
    worst = dict(terms=(0, None), lip=(0, None), cold=(0, None))
    for row in sw['rows']:
        t = row['times']
        d = t['distill'][c]
        tt = t['terms'][c]
        lp = t.get('lipschitz', {}).get(c, math.nan)
        lc = t['lipschitz_cold'][c]
        print(f"   {row['batch']:>5}{row['size']:>6}{d * 1e3:10.1f}"
              f"{tt * 1e3:10.1f}{100 * tt / d:9.1f}{lp * 1e3:9.1f}"
              f"{100 * lp / d:7.1f}{lc * 1e3:12.1f}{100 * lc / d:8.1f}")
        key = (row['batch'], row['size'])
        for k, v in (('terms', tt / d), ('lip', lp / d), ('cold', lc / d)):
            if not math.isnan(v) and v > worst[k][0]:
                worst[k] = (v, key)
    for k, label in (('terms', 'distill terms'),
                     ('lip', 'Lipschitz term (warm)'),
                     ('cold', 'Lipschitz term (cold first step)')):
        v, key = worst[k]
        if key is not None:
            print(f'   worst-case share of {label}: {100 * v:.1f}% '
                  f'(batch {key[0]}, {key[1]} px)')
    sw['worst'] = {k: dict(share=v, batch=key and key[0],
                           size=key and key[1])
                   for k, (v, key) in worst.items()}
