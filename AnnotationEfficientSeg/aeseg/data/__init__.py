"""Data: 3D→2D slicing and reassembly, preprocessing (MONAI transforms), in-memory
slice datasets, and the seeded phantom cohorts of the benchmarks."""
