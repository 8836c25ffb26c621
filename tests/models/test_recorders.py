"""FeatureRecorder: what it records, its calibration and early stop."""
import pytest
import torch

from mmlckd.models import FeatureRecorder, RecordSpec


def test_recorder_calibrate_and_recorded():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(2, 2, 1), torch.nn.ReLU())
    net[0].unused = torch.nn.Identity()  # never called
    tail = []
    net[3].register_forward_hook(lambda *a: tail.append(1))
    x = torch.randn(1, 1, 4, 4)
    rec = FeatureRecorder(net, [RecordSpec('0'),
                                RecordSpec('1', source='input', call='all')],
                          stop_when_done=True)
    with pytest.raises(ValueError):
        with rec:
            net(x)
            raise ValueError('the forward failed after the records')
    # a recording that fails does not calibrate
    assert not rec.calibrated and len(tail) == 1
    feats = rec.recorded()
    assert set(feats) == {'0:output', '1:input'}
    torch.testing.assert_close(feats['0:output'], net[0](x))
    assert isinstance(feats['1:input'], list) and len(feats['1:input']) == 1
    rec.calibrate()
    assert rec.calibrated
    with rec:
        net(x)
    assert len(tail) == 1  # stopped before module 3
    rec.clear()
    assert rec.recorded(strict=False) == {}
    with pytest.raises(RuntimeError, match='did not run'):
        rec.recorded()
    missing = FeatureRecorder(net, [RecordSpec('0.unused')])
    with missing:
        net(x)
    assert missing.recorded(strict=False) == {}
