"""Evaluate a checkpoint (MMDetection / MMSegmentation ``tools/test.py``
arguments).

For a distillation config, only the student is built (no teacher or teacher
checkpoint needed); the checkpoint may be a distillation checkpoint
(``student.*`` keys) or an exported student.

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
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

# any mmlckd import registers mmlckd's modules and the torch.load
# allow-list that --resume / the checkpoint checks need
from mmlckd.compat import (adapt_cfg_for_cpu_dist, dist_teardown,
                           init_cpu_dist)
from mmlckd.compat.checkpoint_io import check_model_checkpoint
from mmlckd.utils.cli import (load_tool_cfg, parse_with_launcher_args,
                              student_test_cfg)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to a pickle file')
    return parse_with_launcher_args(parser, argv)


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
    cfg = load_tool_cfg(args)
    distilled = student_test_cfg(cfg)
    cfg.load_from = None  # loaded below, after the checks
    if args.out is not None:
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(
            cfg.test_evaluator, dict) else list(cfg.test_evaluator)
        cfg.test_evaluator.append(
            dict(type='DumpResults', out_file_path=args.out))
    adapt_cfg_for_cpu_dist(cfg)
    init_cpu_dist(args.launcher)
    with dist_teardown():
        runner = _test_runner_class(cfg).from_cfg(cfg)
        try:
            check_model_checkpoint(runner.model, args.checkpoint,
                                   args.config, distilled=distilled)
        except (OSError, ValueError) as e:
            raise SystemExit(f'error: {e}') from None
        # distillation checkpoints hold 'student.*' (+ connectors)
        revise = [(r'^module\.', '')] + (
            [(r'^student\.', '')] if distilled else [])
        runner.load_checkpoint(args.checkpoint, map_location='cpu',
                               revise_keys=revise)
        metrics = runner.test()
    return metrics


if __name__ == '__main__':
    main()
