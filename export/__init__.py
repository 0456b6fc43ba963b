"""Export stage: a Hugging Face InternVL3.5 checkpoint -> OpenVINO (and ONNX) artifacts in the cache volume."""
