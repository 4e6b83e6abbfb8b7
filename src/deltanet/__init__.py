"""deltanet: linear transformers with the delta rule, fast Triton kernels and a float64-checked spec."""

__version__ = "0.1.0"

# Registers model_type "deltanet" with transformers' AutoConfig, AutoModel and AutoModelForCausalLM.
import deltanet.models  # noqa: E402, F401
