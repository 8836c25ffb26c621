"""The distiller's NaN guard at function level."""
import pytest
import torch

from mmlckd.models.distillers.guard import (check_losses_finite,
                                            check_terms_finite)


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
