from mmengine.model import is_model_wrapper

from mmlckd.models.distillers.guard import non_finite


def unwrap_model(runner):
    """``runner.model`` without its DDP/FSDP wrapper."""
    return runner.model.module if is_model_wrapper(runner.model) \
        else runner.model


def get_distiller(runner, hook_name: str):
    """The (unwrapped) distiller of ``runner``, or a clear error."""
    model = unwrap_model(runner)
    if not hasattr(model, 'teacher') or not hasattr(model, 'distill_weight'):
        raise TypeError(
            f'{hook_name} needs model.type=\'mmlckd.LipschitzDistiller\' '
            f'(got {type(model).__name__}); remove the hook or distil.')
    return model


def refuse_non_finite(state: dict, what: str, logger, allow: bool,
                      refused: str) -> bool:
    """True if ``state`` holds NaN/Inf and ``allow`` is False: logs the
    error ``'<what> holds non-finite values (...): <refused>'`` then. With
    ``allow`` a warning is logged and False returned (save anyway)."""
    bad = non_finite(state)
    if not bad:
        return False
    msg = (f'{what} holds non-finite values ({len(bad)} tensors, e.g. '
           f'{bad[:3]})')
    if not allow:
        logger.error(f'{msg}: {refused}')
        return True
    logger.warning(f'{msg}: saving it anyway (save_non_finite=True)')
    return False
