"""Slicer-free parts of the AnnotationEfficientSeg 3D Slicer module.

Nothing here imports ``slicer`` or ``vtk``. Only ``panel`` and ``forms`` need Qt, and they
get it through ``qt_shim`` (PythonQt inside Slicer, PySide6 in tests). ``process``,
``events``, ``review``, ``refined`` and ``files`` need neither.
"""
