"""What a quantized model costs: per-layer MACs, bit-operations and memory, an energy model, reports."""
