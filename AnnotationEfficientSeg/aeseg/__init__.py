"""AnnotationEfficientSeg core: annotation-efficient segmentation without 3D Slicer.

Layers (see README): ``cohort`` (discovery, reading, validation), ``data`` (slicing,
preprocessing, datasets, phantoms), ``nets``, ``methods`` (one module per method and a
registry), ``engine`` (the one training loop), ``quality``, ``io`` and ``report``.
This package never imports slicer, qt or vtk.
"""

__version__ = "0.1.0"
