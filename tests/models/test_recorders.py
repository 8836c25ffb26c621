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


class _Toy(torch.nn.Module):
    """``out(a(x) + g(x).detach())``: ``g``'s value reaches the recorded
    output without an autograd path."""

    def __init__(self, detach_gate: bool):
        super().__init__()
        self.data_preprocessor = torch.nn.Identity()
        self.a = torch.nn.Conv2d(3, 4, 1)
        self.g = torch.nn.Conv2d(3, 4, 1)
        self.unused = torch.nn.Conv2d(3, 4, 1)
        self.out = torch.nn.Identity()
        self.detach_gate = detach_gate

    def forward(self, x, data_samples=None, mode='tensor'):
        side = self.unused(x)  # computed, never used
        gate = self.g(x).detach() if self.detach_gate else 0 * side
        return self.out(self.a(x) + gate), side


@pytest.mark.parametrize('detach_gate', [False, True])
def test_skip_unread_checks_its_finding_on_a_second_probe(detach_gate):
    """The autograd graph finds the unread modules; a module whose value
    is used without a graph path (detach) makes the check fail, and then
    nothing is skipped."""
    from mmlckd.models.probe import skip_unread, unread_modules
    model = _Toy(detach_gate)
    rec = FeatureRecorder(model, [RecordSpec('out')], 'teacher')
    found = unread_modules(model, rec, (8, 8))
    assert found == (['g', 'unused'] if detach_gate else ['g'])
    assert all(p.requires_grad for p in model.parameters())  # restored
    names = skip_unread(model, rec, (8, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)[0]
        with rec:
            model(x)
        got = rec.recorded()['out:output']
    torch.testing.assert_close(got, ref)
    if detach_gate:
        assert names == [] and rec.skipped == []
    else:
        assert names == ['g'] and rec.skipped == [model.g]
        rec.unskip()
        assert 'forward' not in model.g.__dict__
