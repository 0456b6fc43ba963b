"""The configurations the benchmark compares: the transformers baseline and our backend x precision choices."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    """One thing to measure, run in its own processes."""

    name: str  # row label, also the --configs name
    backend: str  # "transformers" (the baseline) | openvino | onnxruntime | torch (our engine's backends)
    precision: str  # which export folder to serve (EXPORT_PRECISION): fp32 | fp16 | int8 | int4
    inference_precision: str = ""  # OV_INFERENCE_PRECISION: "" = plugin default (bf16 on CPUs with avx512_bf16)
    env: dict = field(default_factory=dict)  # extra environment for the worker and the server
    formats: str = "openvino"  # EXPORT_FORMATS the export must hold
    server: bool = True  # also run the 4-client HTTP workload
    server_only: bool = False  # only the HTTP workload (a serving knob that changes nothing else)
    note: str = ""  # one line for the report

    @property
    def weights(self) -> str:
        """The precision the weights really run in, for the report (torch paths load the fp32 checkpoint)."""
        return "fp32" if self.backend in ("transformers", "torch") else self.precision

    @property
    def is_baseline(self) -> bool:
        """True for transformers' generate() in eager fp32."""
        return self.backend == "transformers"

    def runtime_env(self) -> dict:
        """Environment variables that make RuntimeSettings.from_env() (engine and web app) pick this config."""
        env = {"EXPORT_PRECISION": self.precision, "OV_INFERENCE_PRECISION": self.inference_precision}
        if not self.is_baseline:
            env["BACKEND"] = self.backend
        env.update(self.env)
        return env


BASELINE = "transformers-fp32"
DEFAULT = "openvino-int8"  # what `make run` serves: OpenVINO, int8 export, plugin-default inference precision
EXACT_ACTIVATIONS = {"OV_DYNAMIC_QUANT_GROUP": "0"}

CONFIGS = [
    Config(BASELINE, "transformers", "int8", server=False,
           note="InternVLForConditionalGeneration.generate, eager fp32, no caching (what a user would otherwise run)"),
    Config("openvino-int8", "openvino", "int8",
           note="default: LM and vision int8 weights, activations int8 on the fly in groups of 128, bf16 compute, "
                "4 generations at once with batched decode"),
    Config("openvino-int8-dq32", "openvino", "int8", env={"OV_DYNAMIC_QUANT_GROUP": "32"},
           note="as the default, activation groups of 32 (the OpenVINO plugin's own default)"),
    Config("openvino-int8-dq0", "openvino", "int8", env=EXACT_ACTIVATIONS,
           note="int8 weights, activations not quantised (bf16 compute)"),
    Config("openvino-int8-f32", "openvino", "int8", "f32", note="int8 weights; f32 compute"),
    Config("openvino-int4", "openvino", "int4", note="LM int4 (group 128), vision int8 weights; bf16 compute"),
    Config("openvino-int4-f32", "openvino", "int4", "f32", note="LM int4, vision int8 weights; f32 compute"),
    Config("openvino-fp16", "openvino", "fp16", note="all weights fp16; bf16 compute"),
    Config("openvino-fp16-f32", "openvino", "fp16", "f32", note="all weights fp16; f32 compute"),
    Config("onnxruntime-fp32", "onnxruntime", "fp32", formats="openvino,onnx", note="ONNX Runtime, fp32"),
    Config("onnxruntime-fp32-vision-w8a8", "onnxruntime", "fp32", env={"ONNX_VISION_INT8": "1"},
           formats="openvino,onnx", note="ONNX Runtime, LM fp32, vision W8A8 (dynamic int8)"),
    Config("torch-fp32", "torch", "int8", note="our engine on the torch backend (cpu, fp32 checkpoint)"),
    Config("openvino-int8-conc1", "openvino", "int8", env={"CONCURRENCY": "1"}, server_only=True,
           note="the default serving one generation at a time (CONCURRENCY=1): HTTP workload only"),
    Config("openvino-int8-nobatch", "openvino", "int8", env={"BATCH_DECODE": "0", "CONCURRENCY": "4"},
           server_only=True, note="the default's 4 generations at once without batched decode: HTTP workload only"),
]
BY_NAME = {c.name: c for c in CONFIGS}

# Run by default (the rest with --configs all or by name): the baseline, the default and what it was chosen
# over, one per other engine.
DEFAULT_SET = [BASELINE, "openvino-int8", "openvino-int8-dq32", "openvino-int8-dq0", "openvino-int4",
               "onnxruntime-fp32-vision-w8a8", "torch-fp32", "openvino-int8-conc1", "openvino-int8-nobatch"]
QUICK_SET = [BASELINE, "openvino-int8", "openvino-int4"]


def select(names: str | None, quick: bool) -> list[Config]:
    """Configs named in a comma-separated list ('all' = every one), else the quick or default set."""
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        if wanted == ["all"]:
            return list(CONFIGS)
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown config(s) {', '.join(unknown)}; choose from: {', '.join(BY_NAME)}")
        return [BY_NAME[n] for n in wanted]
    return [BY_NAME[n] for n in (QUICK_SET if quick else DEFAULT_SET)]
