#!/usr/bin/env python
"""Decide how ``tools/setup_env.sh`` installs torch (stdlib only, no network).

Run by setup_env.sh with the environment's python when torch is not
importable yet::

    python tools/torch_install_plan.py --torch-version 2.13.0 [--gpu] \
        --pip-config "$(python -m pip config list)"

On success it prints the arguments for ``pip install``, one per line, and
explains the choice on stderr. When it refuses it prints why and what to do on
stderr and exits with status 2 (nothing printed on stdout).

The choice, in order (the project names no package index itself; every index
comes from the user):

1. No GPU and a local ``torch-V+cpu-<tag>.whl`` for this python in pip's
   find-links (``PIP_FIND_LINKS`` / pip.conf ``find-links``): that wheel
   (offline, the exact CPU build).
2. ``MMLCKD_TORCH_INDEX_URL`` set (GPU or not): ``torch==V --index-url URL``,
   with pip's configured index-url/extra-index-url kept as extra indexes so
   torch's dependencies still resolve from them.
3. NVIDIA GPU: ``torch==V`` from pip's configured or default index (the CUDA
   build, wanted on a GPU box).
4. No GPU, pip has an index configured (``PIP_INDEX_URL``,
   ``PIP_EXTRA_INDEX_URL``, pip.conf ``index-url``/``extra-index-url``):
   ``torch==V`` with pip's own configuration.
5. No GPU and none of the above: pip would use its default index, which on
   Linux serves the multi-GB CUDA build. Refuse, naming the fixes, unless
   ``MMLCKD_ALLOW_DEFAULT_TORCH=1``.
"""
import argparse
import ast
import glob
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

INDEX_VAR = 'MMLCKD_TORCH_INDEX_URL'
ALLOW_VAR = 'MMLCKD_ALLOW_DEFAULT_TORCH'
# pip.conf sections that ``pip install`` reads (``:env:`` = PIP_* variables
# as listed by ``pip config list``).
_SECTIONS = (':env:', 'global', 'install')


class Plan(NamedTuple):
    """``pip_args`` for ``pip install`` (empty when refused) and a message."""
    pip_args: List[str]
    message: str

    @property
    def refused(self) -> bool:
        return not self.pip_args


def parse_pip_config_list(text: str) -> Dict[str, List[str]]:
    """``pip config list`` output -> {option: [values]} for ``pip install``.

    Only the sections ``pip install`` reads are kept; values of the same
    option from several sections are concatenated (env first) and split on
    whitespace, as pip does for find-links and extra-index-url.
    """
    out: Dict[str, List[str]] = {}
    for line in (text or '').splitlines():
        m = re.match(r'^(:env:|[A-Za-z_-]+)\.([A-Za-z0-9_-]+)=(.*)$',
                     line.strip())
        if not m or m.group(1) not in _SECTIONS:
            continue
        raw = m.group(3)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        key = m.group(2).replace('_', '-').lower()
        for v in str(value).split():
            if v not in out.setdefault(key, []):
                out[key].append(v)
    return out


def _split(value: Optional[str]) -> List[str]:
    return (value or '').split()


def configured_indexes(env: Mapping[str, str],
                       pip_config: Mapping[str, Sequence[str]]) -> List[str]:
    """pip's configured index-url and extra-index-urls, in that order."""
    urls: List[str] = []
    for u in (_split(env.get('PIP_INDEX_URL')) +
              list(pip_config.get('index-url', ())) +
              _split(env.get('PIP_EXTRA_INDEX_URL')) +
              list(pip_config.get('extra-index-url', ()))):
        if u not in urls:
            urls.append(u)
    return urls


def find_links_dirs(env: Mapping[str, str],
                    pip_config: Mapping[str, Sequence[str]]) -> List[str]:
    """Local folders among pip's find-links (URLs other than file:// skipped)."""
    dirs: List[str] = []
    for link in (_split(env.get('PIP_FIND_LINKS')) +
                 list(pip_config.get('find-links', ()))):
        if link.startswith('file://'):
            link = link[len('file://'):]
        elif '://' in link:
            continue
        if osp.isdir(link) and link not in dirs:
            dirs.append(link)
    return dirs


def find_local_cpu_wheel(dirs: Sequence[str], torch_version: str,
                         py_tag: str) -> Optional[str]:
    """First ``torch-<V>+cpu-*.whl`` for this python (e.g. cp311) in dirs."""
    for d in dirs:
        for w in sorted(
                glob.glob(osp.join(d, f'torch-{torch_version}+cpu-*.whl'))):
            tags = osp.basename(w)[:-len('.whl')].split('-')
            # name-version-pytag-abitag-platform
            if len(tags) >= 5 and py_tag in tags[-3].split('.'):
                return w
    return None


def redact(url: str) -> str:
    """Hide user:password in a URL before logging it."""
    return re.sub(r'(://)[^/@]+@', r'\1***@', url)


def refusal_message(torch_version: str) -> str:
    return (
        f'no NVIDIA GPU, no local torch-{torch_version}+cpu wheel in pip\'s '
        f'find-links, and no package index configured for pip or mmlckd: '
        f'installing torch=={torch_version} now would use pip\'s default '
        f'index, which may bring the multi-GB CUDA build. Stopping. Do one '
        f'of:\n'
        f'  * export {INDEX_VAR}=<the CPU index URL from PyTorch\'s install '
        f'selector> (or configure pip with PIP_INDEX_URL / pip.conf '
        f'index-url);\n'
        f'  * put a torch-{torch_version}+cpu wheel in a folder in pip\'s '
        f'find-links (PIP_FIND_LINKS or pip.conf find-links);\n'
        f'  * export {ALLOW_VAR}=1 to install from pip\'s default index '
        f'anyway.\n'
        f'Then run the set-up again.')


def plan(env: Mapping[str, str], pip_config: Mapping[str, Sequence[str]],
         gpu: bool, torch_version: str,
         py_tag: Optional[str] = None) -> Plan:
    """The torch install for this machine; see the module docstring.

    Args:
        env: environment variables (``os.environ``).
        pip_config: :func:`parse_pip_config_list` of ``pip config list``.
        gpu: whether an NVIDIA GPU is present.
        torch_version: e.g. ``'2.13.0'``.
        py_tag: wheel python tag of the target python, default this one's.
    """
    if py_tag is None:
        py_tag = f'cp{sys.version_info[0]}{sys.version_info[1]}'
    spec = f'torch=={torch_version}'
    index = env.get(INDEX_VAR, '').strip()
    configured = configured_indexes(env, pip_config)

    if not gpu:
        wheel = find_local_cpu_wheel(
            find_links_dirs(env, pip_config), torch_version, py_tag)
        if wheel:
            return Plan([wheel],
                        f'no GPU: installing the local CPU wheel {wheel}')

    if index:
        extras = [u for u in configured if u != index]
        args = [spec, '--index-url', index]
        for u in extras:
            args += ['--extra-index-url', u]
        extra = (' (pip\'s configured indexes kept as extra: ' +
                 ', '.join(map(redact, extras)) + ')') if extras else ''
        return Plan(args, f'installing {spec} from {INDEX_VAR}='
                    f'{redact(index)}{extra}')

    if gpu:
        return Plan([spec], f'NVIDIA GPU found: installing {spec} (CUDA '
                    f'build) from pip\'s configured or default index')

    if configured:
        return Plan([spec], f'no GPU: installing {spec} from pip\'s '
                    f'configured index ({", ".join(map(redact, configured))})'
                    f'; if that index serves the CUDA build, set {INDEX_VAR} '
                    f'to PyTorch\'s CPU index instead')

    if env.get(ALLOW_VAR, '').strip() not in ('', '0'):
        return Plan([spec], f'no GPU and no index configured, {ALLOW_VAR} '
                    f'set: installing {spec} from pip\'s default index '
                    f'(this may be the multi-GB CUDA build)')

    return Plan([], refusal_message(torch_version))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--torch-version', required=True)
    p.add_argument('--gpu', action='store_true',
                   help='an NVIDIA GPU is present')
    p.add_argument('--pip-config', default='',
                   help='the output of `pip config list`')
    args = p.parse_args(argv)
    result = plan(os.environ, parse_pip_config_list(args.pip_config),
                  args.gpu, args.torch_version)
    print(f'[mmlckd setup] {result.message}', file=sys.stderr)
    if result.refused:
        return 2
    for a in result.pip_args:
        print(a)
    return 0


if __name__ == '__main__':
    sys.exit(main())
