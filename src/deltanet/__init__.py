"""deltanet: linear transformers with the delta rule, fast Triton kernels and a float64-checked spec."""

__version__ = "0.1.0"
