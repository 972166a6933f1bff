"""The catalogue encoder's parts: backends (encoder), the int8 ONNX fast path (onnx_fast), vector cache."""
