from mmengine.model import is_model_wrapper


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
