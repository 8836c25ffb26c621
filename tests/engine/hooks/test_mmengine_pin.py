"""``SafeCheckpointHook`` follows mmengine's private API in two places
(``MMENGINE_PINNED`` in mmlckd/engine/hooks/safe_checkpoint_hook.py): the
``CheckpointHook._save_checkpoint_with_step`` it overrides, and the
``Runner`` attributes ``_resume``/``_load_from`` that ``_load_request``
reads. These tests fail on any mmengine release that may change them, so
an upgrade is a decision, not a silent change of how checkpoints are
written or checked."""
import hashlib
import inspect

import mmengine
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner

from mmlckd.engine.hooks.safe_checkpoint_hook import (MMENGINE_PINNED,
                                                      SafeCheckpointHook)

#: the first 16 hex digits of the SHA-256 of each private piece's source in
#: mmengine 0.10.7: the overridden method, its two callers (when it runs,
#: with which step and meta) and the Runner method that reads the two
#: attributes
PINNED = {
    'CheckpointHook._save_checkpoint_with_step': 'cdbc1b54c7c88d95',
    'CheckpointHook._save_checkpoint': 'ec62a0a4f987522f',
    'CheckpointHook._save_best_checkpoint': '8e1e477297ea08d7',
    'Runner.load_or_resume': '9c653d074f921631',
}

UPGRADE = (
    'mmengine {now}: SafeCheckpointHook follows the private API of mmengine '
    '{pinned} (mmlckd/engine/hooks/safe_checkpoint_hook.py). Compare the '
    'new {what} with the old one, adapt SafeCheckpointHook '
    '(_save_checkpoint_with_step and the helpers it calls, _load_request), '
    'then update MMENGINE_PINNED and PINNED in this file.')


def _digest(qualname: str) -> str:
    owner, name = qualname.split('.')
    fn = getattr({'CheckpointHook': CheckpointHook, 'Runner': Runner}[owner],
                 name)
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


def test_mmengine_is_the_pinned_release():
    assert mmengine.__version__ == MMENGINE_PINNED, UPGRADE.format(
        now=mmengine.__version__, pinned=MMENGINE_PINNED,
        what='release')


def test_the_private_pieces_are_unchanged():
    for qualname, digest in PINNED.items():
        assert _digest(qualname) == digest, UPGRADE.format(
            now=mmengine.__version__, pinned=MMENGINE_PINNED,
            what=qualname)
    # the override takes what mmengine passes
    assert inspect.signature(SafeCheckpointHook._save_checkpoint_with_step) \
        == inspect.signature(CheckpointHook._save_checkpoint_with_step)
    # the runner still keeps the load request where _load_request reads it
    init = inspect.getsource(Runner.__init__)
    assert 'self._resume = resume' in init and \
        'self._load_from = load_from' in init, UPGRADE.format(
            now=mmengine.__version__, pinned=MMENGINE_PINNED,
            what='Runner.__init__')
