"""The package's shape (issue 22): no import cycle between the modules of
``mmlckd`` (imports inside functions included), no file outside
``mmlckd/testing/`` over 350 lines, no function over 60 lines. Read from
the source (``ast``), nothing is imported."""
import ast
import os
import os.path as osp

from tool_modules import REPO

PACKAGE = osp.join(REPO, 'mmlckd')
MAX_FILE_LINES = 350
MAX_FUNCTION_LINES = 60


def _modules() -> dict:
    """``dotted name -> path`` of every module of the package."""
    mods = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                dotted = osp.relpath(path, REPO)[:-3].replace(os.sep, '.')
                mods[dotted[:-len('.__init__')] if dotted.endswith(
                    '.__init__') else dotted] = path
    return mods


def _imports(mods: dict) -> dict:
    """``module -> the package's modules it imports``, at any depth."""
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod.split('.') if path.endswith('__init__.py') else \
            mod.split('.')[:-1]
        for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = '.'.join(package[:len(package) - node.level + 1] +
                                [node.module or ''] if node.level else
                                [node.module]).strip('.')
                targets = [f'{base}.{a.name}' for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition('.')[0]
                if target and target != mod:
                    edges[mod].add(target)
    return edges


def _cycles(edges: dict) -> list:
    """The strongly connected components of more than one module."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    mods = _modules()
    edges = _imports(mods)
    assert 'mmlckd.structures' in edges['mmlckd.models.terms.prediction_kd_term']
    cycles = _cycles(edges)
    assert not cycles, '\n'.join(
        ' <-> '.join(c) + ': ' + '; '.join(
            f'{a} -> {b}' for a in c for b in sorted(edges[a]) if b in c)
        for c in cycles)


def test_file_and_function_lengths():
    too_long = []
    for mod, path in sorted(_modules().items()):
        source = open(path, encoding='utf-8').read()
        rel = osp.relpath(path, REPO)
        lines = source.count('\n')
        if lines > MAX_FILE_LINES and not mod.startswith('mmlckd.testing'):
            too_long.append(f'{rel}: {lines} lines')
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f'{rel}:{node.lineno} {node.name}: '
                                    f'{n} lines')
    assert not too_long, '\n'.join(too_long)
