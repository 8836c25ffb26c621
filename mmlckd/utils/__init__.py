from .config import load_config, resolve_config_path  # noqa: F401
