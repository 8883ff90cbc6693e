"""Running a network outside PyTorch: ONNX export checked against PyTorch (``export``), the CPU runtimes that run
an ONNX file as a network and the engine measured fastest per network and machine (``engines``), int8
quantization calibrated on noisy photos (``quantize``) and its QDQ graph run in PyTorch for fine-tuning
(``qdq``). Imports nothing itself: each module is imported by name."""
