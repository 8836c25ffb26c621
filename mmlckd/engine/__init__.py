"""Training-loop plumbing of the distillation: mmengine hooks."""
from . import hooks  # noqa: F401
