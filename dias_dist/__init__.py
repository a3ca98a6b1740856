"""dias_dist: distributed training of VSS-Net and the DIAS benchmark for DSA-sequence artery segmentation."""

__version__ = "0.1.0"
