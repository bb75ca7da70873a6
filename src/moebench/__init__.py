"""moebench: continuous performance tracking for vLLM's MoE token permute/unpermute kernels.

The package is split by concern: ``models`` (shapes from HF configs), ``routing`` and ``quant``
(inputs), ``impls`` (one module per implementation behind one interface), ``check`` (the
correctness gate), ``timing``/``stats`` (measurement), ``roofline``, ``gpustate`` (NVML),
``sweep`` (grid of points), ``results``/``report`` (output) and ``cli``.
"""

__version__ = "0.1.0"
