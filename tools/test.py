"""Evaluate a checkpoint (MMDetection / MMSegmentation ``tools/test.py``
arguments).

For a distillation config, only the student is built (no teacher or teacher
checkpoint needed); the checkpoint may be a distillation checkpoint
(``student.*`` keys) or an exported student. Of a distillation checkpoint
only the student's weights are loaded (the connectors, balancer and
estimator states it also holds are for resuming training).

The checkpoint must fit the model exactly: missing, unexpected or
size-mismatched keys are an error naming the file, the config and the fix
(mmengine would only warn and evaluate random weights). Its SHA-256 sidecar,
when there is one, is verified.

Nothing in the work dir is rewritten: the config of the test run is saved
in the run's own ``<work_dir>/<timestamp>/`` folder, next to its log, so the
config copy that training left in ``<work_dir>/`` stays the record of how
the model was trained.
"""
import argparse
import os.path as osp

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import load_state_dict

# any mmlckd import registers mmlckd's modules and the torch.load
# allow-list that --resume / the checkpoint checks need
from mmlckd.compat import (adapt_cfg_for_cpu_dist, dist_teardown,
                           init_cpu_dist)
from mmlckd.checkpoint import check_model_checkpoint
from mmlckd.cli.args import load_tool_cfg, parse_with_launcher_args
from mmlckd.cli.train_cfg import student_test_cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to a pickle file')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved (mmdet: under '
        'the run\'s timestamp folder; mmseg: the visualizer\'s save dir)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta', action='store_true',
        help='test-time augmentation: the config\'s tta_model and '
        'tta_pipeline (as mmdet\'s and mmseg\'s tools/test.py)')
    return parse_with_launcher_args(parser, argv)


def apply_show_and_tta(cfg: Config, args) -> None:
    """``--show``/``--show-dir``/``--wait-time`` and ``--tta`` into ``cfg``
    (in place), as mmdet's and mmseg's ``tools/test.py`` do; call it after
    the distiller has been replaced by its student."""
    if args.show or args.show_dir:
        hook = (cfg.get('default_hooks', None) or {}).get(
            'visualization', None)
        if hook is None:
            raise SystemExit(
                'error: --show/--show-dir need a visualization hook in '
                'default_hooks (e.g. mmdet\'s DetVisualizationHook or '
                'mmseg\'s SegVisualizationHook)')
        hook['draw'] = True
        if args.show:
            hook['show'] = True
            hook['wait_time'] = args.wait_time
        if args.show_dir:
            if 'Det' in str(hook.get('type', '')):
                hook['test_out_dir'] = args.show_dir
            else:
                cfg.visualizer['save_dir'] = args.show_dir
    if args.tta:
        missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
        if missing:
            raise SystemExit(
                f'error: --tta needs {" and ".join(missing)} in the config '
                '(the stock mmseg dataset configs define both; for mmdet see '
                'its configs/_base_/datasets/*_tta*.py or mmdet\'s '
                'tools/test.py defaults)')
        data = cfg.test_dataloader.dataset
        while 'dataset' in data:
            data = data['dataset']
        data.pipeline = cfg.tta_pipeline
        cfg.model = dict(cfg.tta_model, module=cfg.model)


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _test_runner_class(cfg: Config) -> type:
    """The runner class of ``cfg`` (mmengine's ``Runner`` unless
    ``runner_type`` names another), with ``dump_config`` writing into the
    run's timestamp folder instead of over ``<work_dir>/<config name>``."""
    base = RUNNERS.get(cfg.runner_type) if 'runner_type' in cfg else Runner
    if base is None:
        raise SystemExit(f'error: unknown runner_type {cfg.runner_type!r}')

    def dump_config(self) -> None:
        name = osp.basename(self.cfg.filename) if self.cfg.filename \
            else f'{self.timestamp}.py'
        self.cfg.dump(osp.join(self.log_dir, name))

    return type(f'Test{base.__name__}', (base, ),
                dict(dump_config=dump_config))


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint not found: {args.checkpoint!r}')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        # mmengine's DumpResults would refuse it only after the model and
        # the data were built, as a traceback
        raise SystemExit(
            f'error: --out {args.out!r}: the predictions are dumped as a '
            'pickle, so the file must end in .pkl or .pickle (e.g. '
            f'--out {osp.splitext(args.out)[0]}.pkl)')
    cfg = load_tool_cfg(args)
    missing = [k for k in ('test_dataloader', 'test_cfg', 'test_evaluator')
               if cfg.get(k, None) is None]
    if missing:  # mmengine: a RuntimeError after building everything
        val = ['val_' + k[len('test_'):] for k in missing
               if cfg.get('val_' + k[len('test_'):], None) is not None]
        raise SystemExit(
            f'error: the config {args.config!r} has no {", ".join(missing)}'
            ': tools/test.py evaluates on the test split they define. Add '
            'them to the config' + (
                ' (to test on the validation split: ' + ', '.join(
                    f'test_{k[len("val_"):]} = {k}' for k in val) + ')'
                if val else '') + '.')
    distilled = student_test_cfg(cfg)
    cfg.load_from = None  # loaded below, after the checks
    if args.out is not None:
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(
            cfg.test_evaluator, dict) else list(cfg.test_evaluator)
        cfg.test_evaluator.append(
            dict(type='DumpResults', out_file_path=args.out))
    apply_show_and_tta(cfg, args)
    adapt_cfg_for_cpu_dist(cfg)
    init_cpu_dist(args.launcher)
    with dist_teardown():
        runner = _test_runner_class(cfg).from_cfg(cfg)
        # with --tta the checkpoint is the one of the TTA model's module
        model = _unwrap(runner.model).module if args.tta else runner.model
        try:
            state = check_model_checkpoint(model, args.checkpoint,
                                           args.config, distilled=distilled)
        except (OSError, ValueError) as e:
            raise SystemExit(f'error: {e}') from None
        if distilled or args.tta:
            # a distillation checkpoint also holds the connectors, the
            # balancer and the estimator states, which testing the student
            # does not use: load the checked student weights only (no
            # "unexpected key" lines)
            load_state_dict(_unwrap(model), state, strict=True)
            runner.logger.info(
                f'Load checkpoint from {args.checkpoint} (the student: '
                f'{len(state)} tensors; the distillation state is not '
                'needed for testing)' if distilled else
                f'Load checkpoint from {args.checkpoint}')
        else:
            runner.load_checkpoint(args.checkpoint, map_location='cpu',
                                   revise_keys=[(r'^module\.', '')])
        metrics = runner.test()
    return metrics


if __name__ == '__main__':
    main()
