"""Packaging and registration: setup.py's ranges and extras, the tested
versions in requirements/*.txt / tools/setup_env.sh, ``import mmlckd``
without mmdet / mmseg, and the one registration mechanism (the ``mmlckd.``
type prefix) in a fresh process."""
import ast
import importlib
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement

from tool_modules import REPO


def _setup_kwargs() -> dict:
    """The literal keyword arguments of setup.py's ``setup(...)`` call."""
    tree = ast.parse(open(osp.join(REPO, 'setup.py')).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, 'id', None) == 'setup')
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:  # version=version() etc.
            pass
    return out


def _pins(text: str) -> dict:
    """``name==version`` pins of the OpenMMLab packages in a text."""
    return dict(re.findall(
        r'\b(mmengine|mmcv|mmdet|mmsegmentation)==([0-9][0-9.]*)', text))


def _run(code: str, **env):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
               os.environ.get('PYTHONPATH', ''), **env)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


REQ_FILES = ('mminstall', 'runtime', 'optional', 'tests')


def _requirements_text() -> str:
    return ''.join(open(osp.join(REPO, 'requirements', f'{n}.txt')).read()
                   for n in REQ_FILES)


def _reqs(name: str) -> dict:
    """``{name: Requirement}`` of ``requirements/<name>.txt``."""
    out = {}
    for line in open(osp.join(REPO, 'requirements', f'{name}.txt')):
        line = line.split('#')[0].strip()
        if line:
            req = Requirement(line)
            out[req.name] = req
    return out


def test_requirements_follow_the_openmmlab_layout():
    """requirements/{mminstall,runtime,optional,tests}.txt, each with its
    kind of package; requirements.txt includes them all."""
    top = open(osp.join(REPO, 'requirements.txt')).read()
    assert [line for line in top.splitlines()
            if line and not line.startswith('#')] == [
                f'-r requirements/{n}.txt' for n in REQ_FILES]
    assert set(_reqs('mminstall')) == {'mmengine', 'mmcv'}
    assert {'mmdet', 'mmsegmentation', 'ftfy', 'regex', 'tensorboard',
            'matplotlib'} == set(_reqs('optional'))
    assert set(_reqs('tests')) == {'pytest'}
    runtime = _reqs('runtime')
    assert 'pytest' not in runtime and 'tensorboard' not in runtime
    # torch 2.13 requires setuptools>=77.0.3 (pip check); mmengine 0.10.7
    # needs pkg_resources
    setuptools = runtime['setuptools'].specifier
    assert setuptools.contains('77.0.3') and not setuptools.contains('69.5.1')
    assert not setuptools.contains('81.0.0')


def test_seg_extra_brings_what_mmseg_imports():
    seg = [Requirement(r).name for r in
           _setup_kwargs()['extras_require']['seg']]
    assert {'mmsegmentation', 'ftfy', 'regex'} <= set(seg)


def test_setup_env_pins_old_setuptools_for_the_mmcv_build_only():
    """setuptools<70 is installed only in the branch that builds mmcv, and
    the runtime's range of requirements/runtime.txt after it."""
    text = open(osp.join(REPO, 'tools', 'setup_env.sh')).read()
    code = [line for line in text.splitlines()
            if not line.lstrip().startswith('#')]
    old = [i for i, line in enumerate(code) if '"setuptools<70"' in line]
    build = [i for i, line in enumerate(code) if 'MMCV_WITH_OPS=1' in line]
    assert len(old) == 1 and len(build) == 1
    # inside the "no cached wheel" branch, right before the build
    branch = max(i for i, line in enumerate(code[:old[0]])
                 if line.strip().startswith('if '))
    assert 'mmcv-2.1.0' in code[branch] and old[0] < build[0]
    runtime = str(_reqs('runtime')['setuptools'].specifier)
    after = [i for i, line in enumerate(code) if 'setuptools' in line
             and i > build[0]]
    assert after and all(set(runtime.split(',')) == set(
        re.search(r'"setuptools([^"]+)"', code[i]).group(1).split(','))
        for i in after)


def test_core_requirements_and_extras():
    kw = _setup_kwargs()
    core = {Requirement(r).name: Requirement(r) for r in
            kw['install_requires']}
    assert set(core) == {'mmengine', 'mmcv'}
    extras = {k: [Requirement(r) for r in v]
              for k, v in kw['extras_require'].items()}
    assert [r.name for r in extras['det']] == ['mmdet']
    assert [r.name for r in extras['seg']][0] == 'mmsegmentation'
    for req in list(core.values()) + extras['det'] + extras['seg'][:1]:
        ops = {s.operator for s in req.specifier}
        assert '==' not in ops and {'>=', '<'} <= ops, str(req)


def test_tested_versions_fall_in_the_supported_ranges():
    kw = _setup_kwargs()
    reqs = [Requirement(r) for r in kw['install_requires'] + sum(
        kw['extras_require'].values(), [])]
    reqs = [r for r in reqs if r.name.startswith('mm')]
    tested = _pins(_requirements_text())
    assert set(tested) == {r.name for r in reqs}
    for req in reqs:
        assert req.specifier.contains(tested[req.name]), (str(req), tested)
    # tools/setup_env.sh (the README set-up) installs exactly those, both
    # det and seg
    setup_env = open(osp.join(REPO, 'tools', 'setup_env.sh')).read()
    assert _pins(setup_env) == tested
    fast_path = dict(re.findall(
        r'"(mmengine|mmcv|mmdet|mmsegmentation)": "([0-9.]+)"', setup_env))
    assert fast_path == tested


@pytest.mark.slow
def test_import_without_mmdet_and_mmseg():
    """The core (distiller, losses, hooks, tools' helpers) imports with
    mmdet and mmseg unavailable."""
    proc = _run('''
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('mmdet', 'mmseg'):
                    raise ImportError('blocked: ' + name)

        sys.meta_path.insert(0, Block())
        import mmlckd, mmlckd.apis  # noqa: F401
        import mmlckd.cli.args, mmlckd.cli.resume  # noqa: F401
        import mmlckd.cli.run_checks, mmlckd.cli.train_cfg  # noqa: F401
        from mmengine.registry import MODELS
        assert MODELS.get('mmlckd.LipschitzDistiller') is not None
        assert not [m for m in sys.modules
                    if m.split('.')[0] in ('mmdet', 'mmseg')]
        print('ok')
    ''')
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', \
        proc.stderr[-3000:]


@pytest.mark.slow
def test_mmlckd_prefix_registers_everything_in_a_fresh_process(tmp_path):
    """A stock-style config that only names ``mmlckd.`` types (no
    custom_imports, nothing imported by hand) builds under mmdet's scope,
    and the first lookup has imported mmlckd, torch.load allow-list
    included (resume needs it before mmengine's torch.load)."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent('''
        default_scope = 'mmdet'
        model = dict(type='mmlckd.OFDLoss', loss_weight=1e-5)
        custom_hooks = [dict(type='mmlckd.LipschitzMonitorHook', interval=5)]
    '''))
    proc = _run(f'''
        import sys
        import torch
        from mmengine.config import Config
        from mmengine.registry import HOOKS, MODELS, init_default_scope
        cfg = Config.fromfile({str(cfg)!r})
        assert 'custom_imports' not in cfg
        assert 'mmlckd' not in sys.modules
        init_default_scope(cfg.default_scope)
        loss = MODELS.build(cfg.model)
        hook = HOOKS.build(cfg.custom_hooks[0])
        assert 'mmlckd' in sys.modules
        assert type(loss).__module__.startswith('mmlckd.')
        assert type(hook).__module__.startswith('mmlckd.')
        from mmengine.logging.history_buffer import HistoryBuffer
        safe = [g[0] if isinstance(g, tuple) else g
                for g in torch.serialization.get_safe_globals()]
        assert HistoryBuffer in safe
        print('ok')
    ''')
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', \
        proc.stderr[-3000:]


def test_registry_locations_import():
    """Each registry's ``locations`` names modules that exist."""
    from mmlckd import registry
    for reg in (registry.MODELS, registry.HOOKS, registry.MODEL_WRAPPERS,
                registry.DATASETS, registry.TRANSFORMS):
        assert reg._locations
        for loc in reg._locations:
            importlib.import_module(loc)
