"""The distiller's NaN guard at function level."""
import pytest
import torch

from mmlckd.models.distillers.guard import (check_losses_finite,
                                            check_terms_finite,
                                            guard_optimizer_steps, non_finite)


def test_terms_guard_names_a_non_finite_feature_list():
    """A ``call='all'`` feature is a list of maps: the guard names it."""
    nan = torch.tensor([[float('nan')]])
    terms = dict(loss_feat=torch.tensor(float('nan')),
                 loss_lipschitz=torch.tensor(1.0))
    features = {'student backbone.layer1': [torch.ones(1, 1), nan],
                'teacher backbone.layer1': torch.ones(1, 1)}
    with pytest.raises(FloatingPointError) as e:
        check_terms_finite(terms, features)
    msg = str(e.value)
    assert "['loss_feat']" in msg
    assert "non-finite features: ['student backbone.layer1']" in msg
    check_terms_finite(dict(loss_feat=torch.tensor(1.0)), features)
    check_terms_finite({}, features)


def test_losses_guard_names_only_the_non_finite_losses():
    losses = dict(loss_cls=[torch.tensor(1.0), torch.tensor(float('inf'))],
                  loss_bbox=torch.tensor(2.0), acc=torch.tensor(float('nan')))
    with pytest.raises(FloatingPointError, match=r"\['loss_cls'\]"):
        check_losses_finite(losses, torch.ones(1, 3, 4, 4))
    del losses['loss_cls']
    check_losses_finite(losses, torch.ones(1, 3, 4, 4))  # acc is no loss


def test_gradient_guard_stops_the_step_and_names_the_parameters():
    """The gradient check SafeCheckpointHook installs: a NaN gradient
    stops optimizer.step before any update, naming the parameter, the
    iteration and the switch; a model with nan_guard=False gets none."""
    from mmengine.optim import OptimWrapper
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    handles = guard_optimizer_steps(model, wrapper, lambda: 7, 'Switch.')
    model(torch.ones(1, 2)).sum().backward()
    wrapper.step()  # finite: taken
    before = model[1].weight.detach().clone()
    model[1].weight.grad.fill_(float('nan'))
    with pytest.raises(FloatingPointError) as e:
        wrapper.step()
    msg = str(e.value)
    assert "non-finite gradients at iteration 7 in 1 parameters (e.g. " \
        "['1.weight'])" in msg and msg.endswith('Switch.')
    assert torch.equal(model[1].weight, before)  # no update applied
    for h in handles:
        h.remove()
    model.nan_guard = False
    assert guard_optimizer_steps(model, wrapper, lambda: 1, '') == []


def test_non_finite_names_the_tensors_of_a_state():
    state = dict(a=torch.ones(2), b=torch.tensor([1.0, float('inf')]),
                 n=torch.tensor(3), c=[torch.tensor(float('nan'))])
    assert non_finite(state) == ['b', 'c']
