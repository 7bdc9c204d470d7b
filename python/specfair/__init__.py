"""The thin Python layer over specfair_kernels: generator, audit, s-CDF (issues 4-7)."""
__version__ = "0.1.0"
