from .lipschitz_distiller import FeaturePair, LipschitzDistiller

__all__ = ['LipschitzDistiller', 'FeaturePair']
