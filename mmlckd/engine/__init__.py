"""Training-loop plumbing of the distillation: mmengine hooks."""
from . import hooks  # noqa: F401
from .log_processor import DistillLogProcessor  # noqa: F401
