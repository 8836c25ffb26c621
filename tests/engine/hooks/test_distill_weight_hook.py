"""DistillWeightHook: the weight schedule."""
import pytest

from mmlckd.engine.hooks import DistillWeightHook


def test_distill_weight_schedule():
    hook = DistillWeightHook(warmup=10, warmup_ratio=0.0, decay='linear',
                             min_ratio=0.5, stop_at=90)
    assert hook.weight(0, 100) == 0.0
    assert hook.weight(5, 100) == pytest.approx(0.5)
    assert hook.weight(10, 100) == pytest.approx(1.0)
    assert hook.weight(55, 100) == pytest.approx(0.75)
    assert hook.weight(89, 100) < 0.6
    assert hook.weight(90, 100) == 0.0
    cos = DistillWeightHook(decay='cosine')
    assert cos.weight(50, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match='decay'):
        DistillWeightHook(decay='exp')
