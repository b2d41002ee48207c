"""Optional Triton kernels (``pip install svlm[triton]``); every kernel has a PyTorch reference."""

from svlm.kernels.rows_attention import head_mean_rows_attention, rows_attention_reference, triton_available

__all__ = ["head_mean_rows_attention", "rows_attention_reference", "triton_available"]
