"""Slicer-free parts of the AnnotationEfficientSeg 3D Slicer module.

Nothing here imports ``slicer`` or ``vtk``. Only ``panel`` and ``forms`` need Qt, and they
get it through ``qt_shim`` (PythonQt inside Slicer, PySide6 in tests). ``process``,
``events``, ``review`` and ``refined`` need neither. They use core modules that import only
the standard library: ``aeseg.io.atomic`` (``plain_mode``), ``aeseg.quality.map_kinds`` and
``aeseg.engine.progress`` (the progress state, which ``events`` re-exports and
``aeseg status`` prints too).
"""
