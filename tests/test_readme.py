"""The README's "Distill your own model" snippet is a working config."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

README = osp.join(osp.dirname(__file__), '..', 'README.md')


def readme_snippet() -> str:
    text = open(README, encoding='utf-8').read()
    m = re.search(
        r'<!-- README-SNIPPET-START -->\s*```python\n(.*?)```\s*'
        r'<!-- README-SNIPPET-END -->', text, re.S)
    assert m, 'README snippet markers not found'
    return m.group(1)


def test_readme_commands_are_the_ci_commands():
    text = open(README, encoding='utf-8').read()
    block = re.search(r'## The two commands.*?```bash\n(.*?)```', text, re.S)
    cmds = [ln.split('#')[0].strip() for ln in block.group(1).splitlines()
            if ln.strip()]
    assert cmds == ['make demo', 'make test']
    ci = open(osp.join(osp.dirname(README), '.ci', 'run')).read()
    assert '\nmake test\n' in ci


@pytest.mark.filterwarnings('ignore::UserWarning')
def test_readme_snippet_builds(tmp_path):
    path = tmp_path / 'distill_cfg.py'
    path.write_text(readme_snippet())
    cfg = Config.fromfile(str(path))
    assert cfg.model.type == 'mmlckd.LipschitzDistiller'
    assert cfg.model.student.type == 'RetinaNet'
    assert cfg.model.student.backbone.depth == 18
    assert cfg.default_scope == 'mmdet'  # untouched
    init_default_scope(cfg.default_scope)
    model_cfg = cfg.model.copy()
    model_cfg.student.backbone.init_cfg = None
    # the snippet's teacher checkpoint does not exist here: a clear error
    with pytest.raises(FileNotFoundError, match='epoch_4.pth'):
        MODELS.build(model_cfg)
    model_cfg.teacher.checkpoint = None
    model_cfg.probe_input_size = (64, 64)
    model = MODELS.build(model_cfg)
    # defaults: the 4 backbone stages of both nets (R18 student, R50 teacher)
    assert len(model.pairs) == 4
    assert model.pairs[0].student.path == 'backbone.layer1.1.relu'
    assert model.pairs[0].teacher.path == 'backbone.layer1.2.relu'
    assert model.pairs[3].teacher_bn == 'backbone.layer4.2.bn3'
    assert model.connectors[3].conv.in_channels == 512
    assert model.connectors[3].conv.out_channels == 2048
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        out = model(x, None, mode='tensor')
    assert isinstance(out, tuple)
