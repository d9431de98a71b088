"""Writing results: atomic files, segmentations (.seg.nrrd via slicerio), NIfTI, maps."""
