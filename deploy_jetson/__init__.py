"""Jetson deployment: ONNX export and checks, TensorRT operator check, engine builder, latency.

- :mod:`deploy_jetson.onnx_export`: ``export_onnx``, ``check_onnx``, ``ort_compare``,
  ``verify_onnx``.
- :mod:`deploy_jetson.trt_ops`: ONNX operators of the TensorRT of each JetPack 6 release,
  ``unsupported_ops``, ``check_trt_ops``.
- :mod:`deploy_jetson.tensorrt_build`: ``build_engine`` (FP16/INT8, entropy calibrator),
  ``run_engine``, ``trtexec_command``; tensorrt and pycuda/cuda-python are imported lazily.
- :mod:`deploy_jetson.latency`: ``ort_latency``, ``torch_latency``.
"""
