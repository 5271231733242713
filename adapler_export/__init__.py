"""adapler-export: AdapLeR text classifiers from PyTorch training to ONNX, TensorRT and Triton."""
__version__ = "0.1.0"
