"""Paths of the checkout, and a script of ``tools/`` imported as a module
(under a name that cannot shadow the standard library, e.g.
``tools/test.py`` is not ``test``). On the path of every test through
pytest.ini's ``pythonpath``."""
import importlib.util
import os.path as osp

TESTS = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(TESTS)


def load_tool(name: str):
    """``tools/<name>.py`` as a fresh module ``mmlckd_tool_<name>``."""
    spec = importlib.util.spec_from_file_location(
        f'mmlckd_tool_{name}', osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
