"""The end-to-end demo, shortened (``--quick``): real code path (synthetic
VOC generation, mmengine Runner training of teacher / baseline / LONDON
student, VOCMetric test, reports), tiny data and 2 iterations per model."""
import json
import subprocess
import sys

import pytest

from tool_modules import REPO as ROOT

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

# the quick demo trains teachers and students through the Runner (the
# tests of pure functions at the end are fast)
slow = pytest.mark.slow


@pytest.fixture(scope='module')
def quick_demo(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('demo')
    cmd = [sys.executable, '-m', 'demo', '--quick',
           '--regimes', 'det-scarce', 'seg', '--rows', 'baseline',
           'london+ofd', '--data-seeds', '1', '--work-dir', str(work_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return work_dir, proc.stdout, cmd


@slow
def test_quick_demo_prints_and_writes_the_paired_table(quick_demo):
    work_dir, out, _ = quick_demo
    md = (work_dir / 'results.md').read_text()
    for text in ('| student alone |',
                 '| + LONDON + OFD (backbone; the old default) |',
                 '(b) detection, the student has 25% of the labelled',
                 '(c) segmentation', 'data seed 1', 'SYNTHETIC data',
                 'Bootstrap SE'):
        assert text in md, text
        assert text in out, text
    # one seed: no verdict can be given, and the table says so
    assert 'one seed: no verdict' in md


@slow
def test_quick_demo_json_pairs_students_by_seed(quick_demo):
    work_dir, _, _ = quick_demo
    res = json.loads((work_dir / 'results.json').read_text())
    assert res['synthetic_data'] is True and res['quick'] is True
    assert set(res['table']) == {'det-scarce|1', 'seg|1'}
    det = res['table']['det-scarce|1']
    assert 0 <= det['teacher'] <= 100
    rows = det['rows']
    assert set(rows) == {'baseline', 'london+ofd'}
    diff = rows['london+ofd']['vs_baseline']
    assert diff['n'] == 1
    assert diff['per_seed'][0] == pytest.approx(
        rows['london+ofd']['metric']['mean'] -
        rows['baseline']['metric']['mean'])
    # the scarce-label students saw a quarter of the labelled images
    with open(work_dir / 'data-quick-seed1' / 'VOCdevkit' / 'VOC2007' /
              'ImageSets' / 'Main' / 'trainval.txt') as f:
        n07 = len(f.read().split())
    assert 0 < rows['baseline']['train_images'] < n07
    assert res['table']['seg|1']['rows']['baseline']['train_images'] == -1


@slow
def test_quick_demo_artifacts_and_logs(quick_demo):
    work_dir, _, _ = quick_demo
    for regime in ('det-scarce', 'seg'):
        data = (work_dir / f'{regime}_training.png').read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    run = work_dir / 'data1' / 'det-scarce' / 'london+ofd' / 'seed0'
    recs = [json.loads(line) for line in
            (run / 'losses.jsonl').read_text().splitlines()]
    # the balancer logs its weights and the gradient shares
    assert 'weight_lipschitz' in recs[-1] and 'gshare_task' in recs[-1]
    assert 'sigma_t.backbone.0' in recs[-1]
    # the plain student's history: the same writer, without the schedule
    base = work_dir / 'data1' / 'det-scarce' / 'baseline' / 'seed0'
    recs = [json.loads(line) for line in
            (base / 'losses.jsonl').read_text().splitlines()]
    assert len(recs) > 1 and 'loss' in recs[-1]
    assert 'distill_weight' not in recs[-1]
    assert (run / 'student_final.pth').is_file()
    assert (run / 'result.json').is_file()


@slow
def test_quick_demo_resumes_without_retraining(quick_demo):
    work_dir, _, cmd = quick_demo
    result = work_dir / 'data1' / 'seg' / 'baseline' / 'seed0' / \
        'result.json'
    before = result.stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-6000:]
    assert result.stat().st_mtime_ns == before
    assert 'Runner' not in again.stdout and 'Iter(train)' not in again.stdout


def test_converged_length_is_the_shortest_schedule_with_a_flat_tail():
    from demo.curve import converged_length

    def run(iters, *metrics):
        return dict(iters=iters, curve=[dict(iter=i, metric=m)
                                        for i, m in enumerate(metrics)])

    runs = [run(2000, 10, 50, 80, 88.0, 88.5), run(500, 5, 9, 12, 15, 30),
            run(1000, 8, 40, 70, 80, 83)]
    assert converged_length(runs) == 2000  # 500: +15, 1000: +3, 2000: +0.5
    assert converged_length(runs, tolerance=5) == 1000
    assert converged_length(runs[1:2]) is None
    # every student seed of a schedule must have a flat tail: one seed
    # still climbing at 2000 makes 2000 unconverged
    climbing = run(2000, 10, 40, 60, 75, 82)
    assert converged_length(runs + [climbing]) is None
    flat = run(2000, 10, 40, 60, 81.0, 81.9)  # another seed, flat enough
    assert converged_length(runs + [flat]) == 2000


def test_curve_report_names_every_seed_and_the_spread():
    from demo.curve import _markdown

    def run(iters, seed, *metrics):
        return dict(task='seg', role='student', iters=iters, seed=seed,
                    train_time_s=1.0, curve=[
                        dict(iter=i, metric=m) for i, m in enumerate(metrics)])

    md = _markdown([run(1200, 0, 50, 90.0, 90.2), run(1200, 1, 50, 80, 86),
                    run(1600, 0, 60, 91, 91.5), run(1600, 1, 60, 90, 90.4)],
                   1.0)
    assert '| 1200 | 1 | 50.0 / 80.0 / 86.0 | +6.0 |' in md
    assert '1200: 88.1 ± 2.1 (n=2), lowest 86.0' in md
    assert 'Converged (last 20% < 1.0 point in every seed): 1600.' in md


def test_gap_closed_is_the_paired_gain_over_the_teacher_gap():
    from demo.report import _gap_closed
    cell = dict(teacher=90.0, rows=dict(baseline=dict(metric=dict(
        mean=70.0, se=1.0, n=3))))
    assert _gap_closed(dict(mean=5.0, se=1.0, n=3), cell) == '25% ± 5%'
    cell['teacher'] = 60.0
    assert _gap_closed(dict(mean=5.0, se=1.0, n=3), cell) == 'no gap'
    assert _gap_closed(None, cell) == '--'


def test_study_refuses_to_mix_schedules_in_one_work_dir(tmp_path):
    from demo.study import Job, _worker
    job = Job('det', 1, 0, 'det-scarce', 'baseline')
    run_dir = tmp_path / 'data1' / 'det-scarce' / 'baseline' / 'seed0'
    run_dir.mkdir(parents=True)
    (run_dir / 'result.json').write_text(json.dumps(dict(train_iters=300)))
    opts = dict(work_dir=str(tmp_path), iters=dict(det=1500),
                teacher_iters=dict(det=1200))
    with pytest.raises(ValueError, match='--work-dir'):
        _worker(job, opts, None)
    opts['iters']['det'] = 300  # the same schedule: reused, not retrained
    assert _worker(job, opts, None) == dict(train_iters=300)


def test_contrasts_pair_rows_by_the_student_seeds_both_have():
    from demo.study import contrasts

    def runs(**metrics):
        return {int(s[1:]): dict(metric=m) for s, m in metrics.items()}

    rows = {'default': runs(s0=90.0, s1=88.0, s2=91.0),
            'london+ofd': runs(s0=80.0, s1=79.0),
            'default-no-lip': runs(s0=89.0, s1=88.5, s2=90.0)}
    out = contrasts(rows)
    assert out['default - london+ofd']['per_seed'] == [10.0, 9.0]
    assert out['default - default-no-lip']['per_seed'] == [1.0, -0.5, 1.0]
    assert '+neck - london+ofd' not in out


def test_unlabelled_row_distils_on_the_rest_of_the_scarce_regime(voc_root,
                                                                 tmp_path):
    """``default+unlabelled`` (issue 18): the 25% labelled lists as in the
    regime, the other 75% of each list as unlabelled images, one per
    labelled image in a batch (mmdet's MultiSourceSampler); the reference
    row trains the student alone on every label."""
    import os.path as osp
    from demo.study import Job, _build_job_cfg
    opts = dict(work_dir=str(tmp_path), quick=True,
                data_roots={0: voc_root}, iters=dict(det=2),
                teacher_iters=dict(det=2), student_batch=2, log_interval=1)
    job = Job('det', 0, 0, 'det-scarce', 'default+unlabelled')
    cfg, kept = _build_job_cfg(job, opts, 'teacher.pth')
    loader = cfg.train_dataloader
    assert loader.sampler.type == 'mmdet.MultiSourceSampler'
    assert loader.sampler.source_ratio == [2, 2] and loader.batch_size == 4
    labelled = loader.dataset.labelled.datasets
    assert kept == sum(d.indices for d in labelled) == 4  # 25% of 8 + 8
    with open(loader.dataset.unlabelled.img_list) as f:
        rest = [line.strip() for line in f if line.strip()]
    assert len(rest) == 12
    for d in labelled:
        with open(osp.join(d.data_root, d.ann_file)) as f:
            ids = [line.strip() for line in f if line.strip()]
        names = [osp.basename(p)[:-4] for p in rest if d.data_prefix[
            'sub_data_root'].strip('/') in p]
        assert names == ids[d.indices:]  # the rest, none of the labelled
        assert all(osp.isfile(p) for p in rest)
    assert cfg.model.type == 'mmlckd.LipschitzDistiller'

    job = Job('det', 0, 0, 'det-scarce', 'baseline-all-labels')
    cfg, kept = _build_job_cfg(job, opts, None)
    assert kept == -1 and 'LipschitzDistiller' not in str(cfg.model.type)


def test_share_of_the_labels_gap_the_unlabelled_images_recover():
    from demo.study import GAP_SHARE, contrasts

    def runs(**metrics):
        return {int(s[1:]): dict(metric=m) for s, m in metrics.items()}

    rows = {'baseline': runs(s0=70.0, s1=72.0),
            'baseline-all-labels': runs(s0=90.0, s1=88.0),
            'default': runs(s0=80.0, s1=80.0),
            'default+unlabelled': runs(s0=85.0, s1=84.0)}
    out = contrasts(rows)
    assert out['default+unlabelled - default']['per_seed'] == [5.0, 4.0]
    assert out[GAP_SHARE]['per_seed'] == [25.0, 25.0]
    del rows['baseline-all-labels']
    assert GAP_SHARE not in contrasts(rows)


def test_unlabelled_rows_are_planned_in_the_scarce_regime_only():
    from demo.study import plan_jobs
    rows = ['baseline', 'default+unlabelled', 'baseline-all-labels']
    teachers, students = plan_jobs(['det-scarce', 'det'], rows, [0], [0])
    assert sorted((j.regime, j.row) for j in students) == [
        ('det', 'baseline'), ('det-scarce', 'baseline'),
        ('det-scarce', 'baseline-all-labels'),
        ('det-scarce', 'default+unlabelled')]
    assert len(teachers) == 1


def test_study_plan_and_its_row_override():
    """``--study``: alone and default in every regime, the default minus
    its Lipschitz terms in the scarce-label one; ``--rows`` brings the old
    default back (one list for every regime given)."""
    from demo.pipeline import parse_args
    from demo.study import plan_jobs
    args = parse_args(['--study'])
    teachers, students = plan_jobs(args.regimes, args.rows, args.seeds,
                                   args.data_seeds)
    assert len(teachers) == 4  # a teacher per task and data seed
    rows = {(j.regime, j.row) for j in students}
    assert rows == {(r, 'baseline') for r in ('det', 'det-scarce', 'seg')} \
        | {(r, 'default') for r in ('det', 'det-scarce', 'seg')} \
        | {('det-scarce', 'default-no-lip')}
    assert len(students) == len(rows) * 3 * 2  # 3 seeds, data seeds 0, 2
    again = parse_args(['--study', '--regimes', 'det-scarce', '--rows',
                        'baseline', 'default', 'london+ofd'])
    _, students = plan_jobs(again.regimes, again.rows, again.seeds,
                            again.data_seeds)
    assert {j.row for j in students} == {'baseline', 'default', 'london+ofd'}


def test_study_starts_the_longest_runs_first():
    """The pool gets the runs longest first (the makespan of two cores:
    in the study's teacher phase the plan order, det then seg per data
    seed, left one core idle for a detection teacher's length)."""
    from demo.pipeline import SCHEDULES
    from demo.study import expected_cost, plan_jobs, start_order
    opts = dict(iters=SCHEDULES['iters'],
                teacher_iters=SCHEDULES['teacher_iters'])
    teachers, students = plan_jobs(['det-scarce', 'seg'],
                                   ['baseline', 'default'], [0], [0, 2])
    order = start_order(teachers, opts)  # what run_jobs starts in order
    assert [j.task for j in teachers] == ['det', 'seg', 'det', 'seg']
    assert [j.task for j in order] == ['seg', 'seg', 'det', 'det']
    costs = {(j.task, j.row): expected_cost(j, opts) for j in students}
    # a distilled run costs more than its student alone, and the students
    # start longest first: a distilled run first, a student alone last
    assert costs[('det', 'default')] > costs[('det', 'baseline')]
    assert costs[('seg', 'default')] > costs[('seg', 'baseline')]
    started = [expected_cost(j, opts) for j in start_order(students, opts)]
    assert started == sorted(started, reverse=True)
    assert start_order(students, opts)[0].row == 'default'
    assert start_order(students, opts)[-1].row == 'baseline'


def test_only_the_plotted_runs_measure_the_gradient_shares(voc_root,
                                                           tmp_path):
    """The gradient shares (a backward per term at every log_interval-th
    step) are measured in the one distilled run a regime's plot shows."""
    from demo.study import Job, _build_job_cfg, plotted_jobs
    rows = {'det-scarce': ['baseline', 'london+ofd', 'default'],
            'seg': ['baseline', 'ofd']}
    plotted = plotted_jobs(['det-scarce', 'seg'], rows, seeds=[2, 1],
                           data_seeds=[3, 0])
    assert plotted == [Job('det', 3, 1, 'det-scarce', 'default'),
                       Job('seg', 3, 1, 'seg', 'ofd')]
    opts = dict(work_dir=str(tmp_path), quick=True,
                data_roots={0: voc_root, 3: voc_root}, iters=dict(det=2),
                teacher_iters=dict(det=2), student_batch=2, log_interval=7,
                plotted=plotted)
    cfg, _ = _build_job_cfg(plotted[0], opts, 'teacher.pth')
    assert cfg.model.balance.log_interval == 7
    for other in (Job('det', 3, 2, 'det-scarce', 'default'),
                  Job('det', 0, 1, 'det-scarce', 'default'),
                  Job('det', 3, 1, 'det-scarce', 'london+ofd')):
        cfg, _ = _build_job_cfg(other, opts, 'teacher.pth')
        assert cfg.model.balance.log_interval == 0, other


def test_student_schedules_are_per_regime():
    """Each regime's student has its own converged schedule; --iters-det
    sets both detection regimes, --iters-det-scarce the scarce one over it;
    a task's key serves the regimes without one of their own."""
    from demo.pipeline import SCHEDULES, parse_args, student_iters
    from demo.study import Job, job_iters
    assert student_iters(parse_args([])) == SCHEDULES['iters']
    assert student_iters(parse_args(['--iters-det', '700'])) == {
        'det': 700, 'det-scarce': 700, 'seg': SCHEDULES['iters']['seg']}
    assert student_iters(parse_args(
        ['--iters-det', '700', '--iters-det-scarce', '300']))[
            'det-scarce'] == 300
    assert set(student_iters(parse_args(['--quick'])).values()) == {2}
    opts = dict(iters={'det': 900, 'det-scarce': 500},
                teacher_iters=dict(det=1200))
    assert job_iters(Job('det', 0, 0, 'det', 'baseline'), opts) == 900
    assert job_iters(Job('det', 0, 0, 'det-scarce', 'default'), opts) == 500
    assert job_iters(Job('det', 0, 0), opts) == 1200  # the teacher
    assert job_iters(Job('det', 0, 0, 'det-scarce', 'baseline'),
                     dict(iters=dict(det=900))) == 900  # the task's key
