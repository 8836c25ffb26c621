"""How ``tools/setup_env.sh`` installs torch (``tools/torch_install_plan.py``).

No network and no real install: the planner is tested directly, and the shell
script is run against a fake virtualenv whose ``python`` records every call
(``pip install`` included) and stops the script right after the torch step.
The only index URLs used are local ``file://`` placeholders.
"""
import json
import os
import os.path as osp
import re
import stat
import subprocess
import sys

import pytest

from tool_modules import REPO, load_tool

SETUP = osp.join(REPO, 'tools', 'setup_env.sh')
V = '2.13.0'
TAG = f'cp{sys.version_info[0]}{sys.version_info[1]}'
TORCH_INDEX = 'file:///some/local/torch-cpu-index'
PIP_INDEX = 'file:///some/local/index'
PIP_EXTRA = 'file:///some/local/extra-index'


tip = load_tool('torch_install_plan')


@pytest.fixture
def wheels(tmp_path):
    """A find-links folder with a CPU torch wheel for this python (and one
    for another python and a CUDA-less-tagged decoy that must be ignored)."""
    d = tmp_path / 'wheels'
    d.mkdir()
    (d / f'torch-{V}+cpu-cp27-cp27mu-manylinux_2_28_x86_64.whl').touch()
    (d / f'torch-{V}-{TAG}-{TAG}-manylinux_2_28_x86_64.whl').touch()  # CUDA
    w = d / f'torch-{V}+cpu-{TAG}-{TAG}-manylinux_2_28_x86_64.whl'
    w.touch()
    return str(d), str(w)


# ------------------------------------------------------------------ planner
def plan(env=None, config='', gpu=False):
    return tip.plan(env or {}, tip.parse_pip_config_list(config), gpu, V,
                    py_tag=TAG)


def test_parse_pip_config_list():
    text = (":env:.find-links='/opt/a'\n"
            ":env:.index-url='file:///x'\n"
            "global.cert='/etc/ssl/certs/ca.crt'\n"
            "global.extra-index-url='file:///y file:///z'\n"
            "global.find-links='/opt/a /opt/b'\n"
            "download.index-url='file:///not-for-install'\n"
            "garbage line\n")
    cfg = tip.parse_pip_config_list(text)
    assert cfg['find-links'] == ['/opt/a', '/opt/b']
    assert cfg['index-url'] == ['file:///x']
    assert cfg['extra-index-url'] == ['file:///y', 'file:///z']
    assert tip.parse_pip_config_list('') == {}


def test_local_wheel_from_env_find_links(wheels):
    d, w = wheels
    # a local wheel wins over every index setting on a machine without GPU
    p = plan({'PIP_FIND_LINKS': f'/nonexistent {d}',
              'MMLCKD_TORCH_INDEX_URL': TORCH_INDEX,
              'PIP_INDEX_URL': PIP_INDEX})
    assert p.pip_args == [w]
    assert 'local CPU wheel' in p.message


def test_local_wheel_from_pip_config_find_links(wheels):
    d, w = wheels
    p = plan(config=f"global.find-links='file://{d}'")
    assert p.pip_args == [w]


def test_wheel_for_another_python_is_not_used(tmp_path):
    (tmp_path / f'torch-{V}+cpu-cp27-cp27mu-linux_x86_64.whl').touch()
    (tmp_path / f'torch-2.0.0+cpu-{TAG}-{TAG}-linux_x86_64.whl').touch()
    p = plan({'PIP_FIND_LINKS': str(tmp_path)})
    assert p.refused


def test_torch_index_url(tmp_path):
    p = plan({'MMLCKD_TORCH_INDEX_URL': TORCH_INDEX,
              'PIP_FIND_LINKS': str(tmp_path)})  # no wheel there
    assert p.pip_args == [f'torch=={V}', '--index-url', TORCH_INDEX]


def test_torch_index_url_keeps_pip_indexes_as_extra():
    p = plan({'MMLCKD_TORCH_INDEX_URL': TORCH_INDEX,
              'PIP_INDEX_URL': PIP_INDEX},
             config=f"global.extra-index-url='{PIP_EXTRA} {TORCH_INDEX}'")
    assert p.pip_args == [f'torch=={V}', '--index-url', TORCH_INDEX,
                          '--extra-index-url', PIP_INDEX,
                          '--extra-index-url', PIP_EXTRA]


@pytest.mark.parametrize('env,config', [
    ({'PIP_INDEX_URL': PIP_INDEX}, ''),
    ({'PIP_EXTRA_INDEX_URL': PIP_EXTRA}, ''),
    ({}, f"global.index-url='{PIP_INDEX}'"),
    ({}, f"install.extra-index-url='{PIP_EXTRA}'"),
])
def test_pip_configured_index(env, config):
    p = plan(env, config)
    assert p.pip_args == [f'torch=={V}']  # pip's own configuration decides
    assert "pip's configured index" in p.message


@pytest.mark.parametrize('allow', [None, '', '0'])
def test_nothing_configured_refuses(allow):
    env = {} if allow is None else {'MMLCKD_ALLOW_DEFAULT_TORCH': allow}
    p = plan(env)
    assert p.refused and p.pip_args == []
    for needle in ('default index', 'CUDA', 'MMLCKD_TORCH_INDEX_URL',
                   "PyTorch's install selector", 'find-links',
                   'MMLCKD_ALLOW_DEFAULT_TORCH=1'):
        assert needle in p.message


def test_nothing_configured_allowed():
    p = plan({'MMLCKD_ALLOW_DEFAULT_TORCH': '1'})
    assert p.pip_args == [f'torch=={V}']
    assert 'default index' in p.message


def test_gpu(wheels):
    d, _ = wheels
    # with a GPU the CUDA build from pip's index is wanted, not the CPU wheel
    assert plan({'PIP_FIND_LINKS': d}, gpu=True).pip_args == [f'torch=={V}']
    assert plan({'MMLCKD_TORCH_INDEX_URL': TORCH_INDEX}, gpu=True).pip_args \
        == [f'torch=={V}', '--index-url', TORCH_INDEX]


def test_credentials_are_not_logged():
    secret = 'file://user:s3cret@/some/local/index'
    p = plan({'MMLCKD_TORCH_INDEX_URL': secret, 'PIP_INDEX_URL': secret + '2'})
    assert p.pip_args[2] == secret
    assert 's3cret' not in p.message


def test_cli(capsys, monkeypatch):
    for k in list(os.environ):
        if k.startswith('PIP_') or k.startswith('MMLCKD_'):
            monkeypatch.delenv(k)
    assert tip.main(['--torch-version', V]) == 2
    out, err = capsys.readouterr()
    assert out == '' and 'MMLCKD_ALLOW_DEFAULT_TORCH=1' in err
    monkeypatch.setenv('MMLCKD_TORCH_INDEX_URL', TORCH_INDEX)
    assert tip.main(['--torch-version', V, '--gpu',
                     f"--pip-config=global.index-url='{PIP_INDEX}'"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [f'torch=={V}', '--index-url', TORCH_INDEX,
                                '--extra-index-url', PIP_INDEX]


# --------------------------------------------- setup_env.sh with a fake pip
FAKE_PYTHON = r'''#!{exe}
"""Fake venv python: records argv; torch is not importable; pip is mocked."""
import json, os, sys
args = sys.argv[1:]
log = os.environ['FAKE_PY_LOG']
with open(log, 'a') as f:
    f.write(json.dumps(args) + '\n')
if args[:1] == ['-']:  # the fast-path check: not ready
    sys.stdin.read()
    sys.exit(1)
if args[:1] == ['-c']:  # import torch / mmcv ...: not installed
    sys.exit(1)
if args[:2] == ['-m', 'pip']:
    rest = [a for a in args[2:] if not a.startswith('--disable-pip')]
    if rest[:2] == ['config', 'list']:
        print(os.environ.get('FAKE_PIP_CONFIG', ''))
        sys.exit(0)
    if rest[:1] == ['install']:
        if os.path.exists(log + '.torch'):  # the step after torch: stop here
            sys.exit(99)
        open(log + '.torch', 'w').close()
        sys.exit(0)
    sys.exit(1)
if args and args[0].endswith('torch_install_plan.py'):
    os.execv(sys.executable, [sys.executable] + args)
sys.exit(1)
'''


def run_setup(tmp_path, env=None, pip_config='', gpu=False):
    """Run setup_env.sh with the fake venv; -> (rc, stderr, pip installs)."""
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    py = venv / 'bin' / 'python'
    py.write_text(FAKE_PYTHON.replace('{exe}', sys.executable))
    fakebin = tmp_path / 'fakebin'
    fakebin.mkdir()
    smi = fakebin / 'nvidia-smi'
    smi.write_text(f'#!/bin/sh\nexit {0 if gpu else 1}\n')
    for f in (py, smi):
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / 'calls.jsonl'
    full_env = {
        'PATH': f'{fakebin}{os.pathsep}{os.environ["PATH"]}',
        'HOME': str(tmp_path),
        'MMLCKD_CACHE': str(tmp_path / 'cache'),
        'VIRTUAL_ENV': str(venv),
        'FAKE_PY_LOG': str(log),
        'FAKE_PIP_CONFIG': pip_config,
        **(env or {})
    }
    r = subprocess.run(['bash', SETUP], env=full_env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=60)
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    installs = [c[c.index('install') + 1:] for c in calls
                if c[:2] == ['-m', 'pip'] and 'install' in c]
    return r.returncode, r.stderr, installs


def test_setup_sh_local_wheel(tmp_path, wheels):
    d, w = wheels
    rc, err, installs = run_setup(
        tmp_path, pip_config=f"global.find-links='{d}'")
    assert rc == 99, err  # stopped by the fake pip at the step after torch
    assert installs[0] == [w]
    assert 'local CPU wheel' in err


def test_setup_sh_torch_index_url(tmp_path):
    rc, err, installs = run_setup(
        tmp_path, env={'MMLCKD_TORCH_INDEX_URL': TORCH_INDEX},
        pip_config=f":env:.extra-index-url='{PIP_EXTRA}'")
    assert rc == 99, err
    assert installs[0] == [f'torch=={V}', '--index-url', TORCH_INDEX,
                           '--extra-index-url', PIP_EXTRA]


def test_setup_sh_pip_configured_index(tmp_path):
    rc, err, installs = run_setup(
        tmp_path, pip_config=f"global.index-url='{PIP_INDEX}'")
    assert rc == 99, err
    assert installs[0] == [f'torch=={V}']


def test_setup_sh_refuses_without_index(tmp_path):
    rc, err, installs = run_setup(tmp_path)
    assert rc != 0 and rc != 99
    assert installs == []  # nothing installed at all
    assert 'MMLCKD_TORCH_INDEX_URL' in err
    assert 'MMLCKD_ALLOW_DEFAULT_TORCH=1' in err


def test_setup_sh_allow_default_index(tmp_path):
    rc, err, installs = run_setup(
        tmp_path, env={'MMLCKD_ALLOW_DEFAULT_TORCH': '1'})
    assert rc == 99, err
    assert installs[0] == [f'torch=={V}']


def test_setup_sh_gpu(tmp_path, wheels):
    d, _ = wheels
    rc, err, installs = run_setup(tmp_path, env={'PIP_FIND_LINKS': d},
                                  gpu=True)
    assert rc == 99, err
    assert installs[0] == [f'torch=={V}']
    assert 'NVIDIA GPU' in err


# ------------------------------------------------- no index host in the tree
ALLOWED_HOSTS = {'arxiv.org'}  # paper links; never a package index


def _tracked_text_files():
    try:
        names = subprocess.run(
            ['git', 'ls-files', '-z'], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, check=True).stdout.decode().split('\0')
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout')
    for name in filter(None, names):
        path = osp.join(REPO, name)
        try:
            with open(path, encoding='utf-8') as f:
                yield name, f.read()
        except (OSError, UnicodeDecodeError):
            continue  # deleted in the work tree, or binary


def test_tree_names_no_package_index_host():
    """Index hosts come from the user: the project names none (issue 13)."""
    # http(s)://[user@]host -- host never part of a user:password@ prefix
    # (checkpoint schemes like torchvision://resnet18 name no host)
    url_host = re.compile(
        r'\b(?:https?|ftp)://(?:[^/\s@]*@)?([^/\s:@\'"<>)]+)(?![^/\s]*@)',
        re.I)
    bare_host = re.compile(r'\b((?:[a-z0-9-]+\.)+(?:org|com))\b', re.I)
    index_path = re.compile(r'\b(?:[a-z0-9-]+\.)+[a-z]{2,}/(?:simple|whl)\b',
                            re.I)
    bad = []
    for name, text in _tracked_text_files():
        for i, line in enumerate(text.splitlines(), 1):
            hosts = set(url_host.findall(line)) | set(bare_host.findall(line))
            if hosts - ALLOWED_HOSTS or index_path.search(line):
                bad.append(f'{name}:{i}: {line.strip()}')
    assert not bad, '\n'.join(bad)
