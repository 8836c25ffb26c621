from .export import export_student, save_student

__all__ = ['export_student', 'save_student']
