"""The demo's result table reads cleanly with one seed."""
from demo.report import study_markdown


def test_one_seed_row_says_n_once():
    stat = dict(mean=0.0, se=0.0, n=1, gain=False, loss=False)
    table = {'det|0': dict(regime='det', data_seed=0, teacher=None, rows={
        'baseline': dict(metric=stat, vs_baseline=None, train_images=8,
                         bootstrap_se=0.1)})}
    text = study_markdown(table, {'det': 'mAP'}, '# results')
    row = [line for line in text.splitlines()
           if line.startswith('| student alone |')]
    assert row == ['| student alone | 0.0 (n=1) | -- | -- | -- |']


def test_plot_run_tool_draws_a_users_run(tmp_path):
    import json

    from tool_modules import load_tool
    work = tmp_path / 'distill_run'
    work.mkdir()
    with open(work / 'lipschitz.jsonl', 'w') as f:
        for it in range(1, 6):
            rec = {'iter': it, 'epoch': 1, 'loss_cls': 1.0 / it,
                   'loss_lipschitz': 0.1, 'sigma_s.backbone.0': 1.0 + it,
                   'sigma_t.backbone.0': 2.0}
            if it == 4:
                rec.update(gshare_task=0.6, gshare_lipschitz=0.4)
            f.write(json.dumps(rec) + '\n')
    out = load_tool('plot_run').main([str(work)])
    assert out == str(work / 'run.png')
    assert (work / 'run.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    import pytest
    with pytest.raises(SystemExit, match='LipschitzMonitorHook'):
        load_tool('plot_run').main([str(tmp_path)])
