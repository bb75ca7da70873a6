"""Stand-ins for what cannot exist on a CPU-only test machine (see vllm_eras.py)."""
