"""What the benchmark prints: per family its modes, ratios and terms
alone; a summary; the targets table (one line per family)."""
from .schedule import TARGETS

MiB = 1024.0**2

#: mode -> (label, key of its peak in the memory results)
LABELS = [('student', '(a) student train step', ('student', 'peak')),
          ('teacher', '(b) teacher fwd, no grad', ('teacher', 'peak')),
          ('teacher_skip', '    (b) unread modules skipped', None),
          ('steady', '(c) distill step, steady', ('distill', 'steady')),
          ('calibration', '(c) calibration step', ('distill', 'calibration')),
          ('share', '(c) gradient-share step', ('distill', 'share')),
          ('distill_noguard', '    (c) steady, nan_guard off', None),
          ('terms', '    distill terms fwd+bwd', None),
          ('lipschitz', '    Lipschitz fwd+bwd', None),
          ('guard', '    nan_guard check', None)]


def _num(x, fmt='.3f', width=0) -> str:
    return f'{x:{width}{fmt}}' if x is not None else f"{'-':>{width}}"


def _both(ratios: dict, key: str) -> str:
    return f"wall {_num(ratios['wall'][key])}, cpu {_num(ratios['cpu'][key])}"


def print_model(res, args, env) -> None:
    clock = args.clock
    default = res['variants']['default']
    t, r, vr = res['times'], res['ratios'], default['ratios']
    es = res['early_stop']
    print(f"\n== {res['model']}: {res['title']} | image {res['size']}x"
          f"{res['size']}, batch {res['batch']}, {res['steps']} steps after "
          f"{res['warmup']} warm-up | {env['device_name']} | threads "
          f"{env['threads']}{' | amp' if res['amp'] else ''}")
    print(f"   student and teacher: {res['config']}")
    print(f"   distiller: the README drop-in, every argument default: terms "
          f"{', '.join(default['terms'])}, weighted by the balancer "
          f"(calibrated in {default['calibration_steps']} steps)")
    print(f"   teacher early stop: {es['early_calls']} of {es['full_calls']}"
          f" leaf-module calls of a full forward (stops after "
          f"{es['last_recorded']}); in the distiller it skips "
          f"{', '.join(_collapse(es.get('skipped', []))) or 'nothing'} "
          "(teacher.skip_unread), (b) does not")
    mem = res.get('memory', {})
    print(f"   {'mode':<30}{'wall ms':>10}{'cpu ms':>10}{'peak MiB':>11}")
    for key, label, where in LABELS:
        if key not in t:
            continue
        m = mem.get(where[0], {}).get(where[1]) if where and mem else None
        print(f"   {label:<30}{t[key]['wall'] * 1e3:10.1f}"
              f"{t[key]['cpu'] * 1e3:10.1f}"
              f"{_num(m and m / MiB, '.1f', 11)}")
    steady = t['steady'][clock]
    print(f"   distill terms = {100 * t['terms'][clock] / steady:.1f}% and "
          f"the nan_guard check {100 * t['guard'][clock] / steady:.1f}% of "
          f"the steady step ({clock})")
    c, sch = default['counts'], res['schedule']
    print(f"   1x schedule: {sch['how']} = {sch['iters']} iterations: "
          f"{c.get('calibration', 0)} calibration + {c.get('share', 0)} "
          f"gradient-share + {c['steady']} steady steps (balance iters, "
          f"log_interval: {sch['balance']})")
    print(f"   steady = t_steady / (t_student + t_teacher) = "
          f"{r['steady']:.3f}   [{clock}; {_both(vr, 'steady')}]")
    print(f"   amortised = t_1x_mean / (t_student + t_teacher) = "
          f"{r['amortised']:.3f}   [{clock}; {_both(vr, 'amortised')}]")
    print(f"   calibration = t_calibration / t_steady = "
          f"{_num(r['calibration'])}   [{clock}; "
          f"{_both(vr, 'calibration')}]")
    if r['memory'] is not None:
        tm, dm = mem['teacher'], mem['distill']
        print(f"   memory = peak_distill / (peak_student + teacher_weights_"
              f"and_activations) = {r['memory']:.3f}   "
              f"[{dm['peak'] / MiB:.1f} / ({mem['student']['peak'] / MiB:.1f}"
              f" + {tm['weights'] / MiB:.1f} + {tm['act'] / MiB:.1f}) MiB;"
              f" steady phase {dm['steady'] / MiB:.1f} MiB]")
    _print_alone(res, clock)
    _print_syncs_profile(res, args)


def _collapse(names) -> list:
    """``['a.b.0', 'a.b.1', 'a.c']`` -> ``['a.b.*', 'a.c']``."""
    out = []
    for name in names:
        head, _, tail = name.rpartition('.')
        key = f'{head}.*' if tail.isdigit() else name
        if key not in out:
            out.append(key)
    return out


def _print_alone(res, clock) -> None:
    others = {k: v for k, v in res['variants'].items() if k != 'default'}
    if not others:
        return
    print(f"   each term alone ({clock}; its own teacher depth and "
          "balancer):")
    print(f"   {'variant':<20}{'t_tea ms':>9}{'t_dis ms':>9}{'steady':>9}"
          f"{'amortised':>10}{'calibration':>12}  teacher stops after")
    for key, v in others.items():
        t, vr = v['times'], v['ratios'][clock]
        print(f"   {key:<20}{t['teacher'][clock] * 1e3:9.1f}"
              f"{t['steady'][clock] * 1e3:9.1f}{vr['steady']:9.3f}"
              f"{vr['amortised']:10.3f}{_num(vr['calibration'], '.3f', 12)}"
              f"  {v['early_stop']['last_recorded']}")


def _print_syncs_profile(res, args) -> None:
    if 'syncs' in res:
        sy = res['syncs']
        counts = ', '.join(f'{k} {len(v)}' for k, v in sy.items()
                           if k != 'terms')
        where = ', '.join(sorted(set(sy['terms']))) or '-'
        print(f"   host-device syncs per step: {counts}; in the "
              f"distillation terms {len(sy['terms'])} ({where})")
    if 'profile' in res:
        p = res['profile']
        print(f"   profiled steady step: aten::clone {p['clone_ms']:.1f} ms"
              f" of {p['total_ms']:.1f} ms self CPU")
        if args.verbose:
            print(p['table'])


def print_summary(out, args) -> None:
    c = args.clock
    print(f'\n== summary ({c} clock; the default distiller)')
    print(f"   {'model':<30}{'t_stu ms':>9}{'t_tea ms':>9}{'t_dis ms':>9}"
          f"{'mem_stu':>9}{'mem_tea':>9}{'mem_dis':>9}  (MiB)")
    for res in out['models']:
        t, mem = res['times'], res.get('memory')
        ms = ''.join(f'{mem[k]["peak"] / MiB:9.0f}' for k in (
            'student', 'teacher', 'distill')) if mem else ''
        print(f"   {res['title']:<30}{t['student'][c] * 1e3:9.0f}"
              f"{t['teacher'][c] * 1e3:9.0f}{t['steady'][c] * 1e3:9.0f}{ms}")


def print_targets(out, args) -> None:
    """One line per family: the ratios of the targets and PASS/MISS."""
    bounds = ', '.join(f'{k} <= {v:.2f}' for k, v in TARGETS.items())
    print(f'\n== targets ({args.clock} clock; {bounds}; steady also for '
          'each term alone)')
    print(f"   {'family':<16}{'steady':>9}{'alone':>9}{'amortised':>11}"
          f"{'memory':>9}{'calibration':>13}  result")
    for res in out['models']:
        r = res['ratios']
        print(f"   {res['model']:<16}{r['steady']:9.3f}"
              f"{_num(r['steady_alone'], '.3f', 9)}{r['amortised']:11.3f}"
              f"{_num(r['memory'], '.3f', 9)}"
              f"{_num(r['calibration'], '.3f', 13)}  {r['verdict']}")
