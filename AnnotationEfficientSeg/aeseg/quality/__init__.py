"""Label quality: per-case scores and flags (quality.csv), segmentation metrics, evaluation."""
