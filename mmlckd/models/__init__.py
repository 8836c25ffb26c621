from .connectors import *  # noqa: F401,F403
from .distillers import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .terms import *  # noqa: F401,F403
from .recorders import FeatureRecorder, RecordSpec, StopForward  # noqa: F401
