"""Packaging and registration: setup.py's ranges and extras, the tested
versions in requirements.txt / tools/setup_env.sh, ``import mmlckd``
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


def test_core_requirements_and_extras():
    kw = _setup_kwargs()
    core = {Requirement(r).name: Requirement(r) for r in
            kw['install_requires']}
    assert set(core) == {'mmengine', 'mmcv'}
    extras = {k: [Requirement(r) for r in v]
              for k, v in kw['extras_require'].items()}
    assert [r.name for r in extras['det']] == ['mmdet']
    assert [r.name for r in extras['seg']] == ['mmsegmentation']
    for req in list(core.values()) + extras['det'] + extras['seg']:
        ops = {s.operator for s in req.specifier}
        assert '==' not in ops and {'>=', '<'} <= ops, str(req)


def test_tested_versions_fall_in_the_supported_ranges():
    kw = _setup_kwargs()
    reqs = [Requirement(r) for r in kw['install_requires'] + sum(
        kw['extras_require'].values(), [])]
    tested = _pins(open(osp.join(REPO, 'requirements.txt')).read())
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
        import mmlckd, mmlckd.apis, mmlckd.utils.cli  # noqa: F401
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
    for reg in (registry.MODELS, registry.HOOKS, registry.MODEL_WRAPPERS):
        assert reg._locations
        for loc in reg._locations:
            importlib.import_module(loc)
