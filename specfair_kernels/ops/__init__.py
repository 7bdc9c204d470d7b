"""Triton kernels (GPU; on the CPU under TRITON_INTERPRET=1)."""
