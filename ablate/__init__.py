"""ablate: ablation grids and hyperparameter search for semantic segmentation."""

__version__ = "0.1.0"
