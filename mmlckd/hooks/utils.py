from mmengine.model import is_model_wrapper


def get_distiller(runner, hook_name: str):
    """The (unwrapped) distiller of ``runner``, or a clear error."""
    model = runner.model.module if is_model_wrapper(runner.model) \
        else runner.model
    if not hasattr(model, 'teacher') or not hasattr(model, 'distill_weight'):
        raise TypeError(
            f'{hook_name} needs model.type=\'mmlckd.LipschitzDistiller\' '
            f'(got {type(model).__name__}); remove the hook or distil.')
    return model
