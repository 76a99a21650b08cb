"""The built-in demo: a synthetic shapes dataset (COCO instances + ADE20K-style semantic)."""
from .dataset import SEG_CLASSES, DemoDataSpec, is_up_to_date, make_demo_data
from .scene import CLASSES, Scene, SceneSpec, draw_scene

__all__ = ['CLASSES', 'SEG_CLASSES', 'DemoDataSpec', 'Scene', 'SceneSpec', 'draw_scene',
           'is_up_to_date', 'make_demo_data']
