"""Fused GPU kernels. ``convgru_triton`` holds the Triton ConvGRU step kernels (imported on demand,
since importing it imports triton); ``dias_dist.models.convgru`` picks them with ``set_impl``."""
