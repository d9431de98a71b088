"""Slicer-free parts of the AnnotationEfficientSeg 3D Slicer module.

Nothing here imports ``slicer`` or ``vtk``. Only ``panel`` and ``forms`` need Qt, and they
get it through ``qt_shim`` (PythonQt inside Slicer, PySide6 in tests). ``process``,
``events``, ``review`` and ``refined`` need neither
(they take ``plain_mode`` from the core's ``aeseg.io.atomic``, which imports only the
standard library).
"""
