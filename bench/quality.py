"""Numerical cost of each speed option (`python -m bench.quality`): error against an fp32 reference.

The reference is the fp32 export with f32 inference, no dynamic quantization and an f32 KV cache. Each
configuration (export precision x inference precision x dynamic-quantization group x KV-cache precision)
runs the same inputs: the vision features of 1-tile and 3-tile photos; the language model teacher-forced
on the reference's own input embeddings (a photo + question prompt and the reference's 32 greedy tokens),
once in one prefill and once token by token as generation runs; and, end to end, the first token each
configuration generates for each photo. One configuration is compiled at a time and released before the
next. Writes bench/quality.json and bench/quality.md (whose notes define each figure).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = "builtin:random-1b,builtin:tiny-random"
PARTS = {"vision": "openvino_vision_embeddings_model", "embeddings": "openvino_text_embeddings_model",
         "lm": "openvino_language_model"}
QUESTION = ("Look at this picture and describe it in detail: what objects are there, where is the person "
            "standing, what colour is the small car on the left, is there a cup on the table near the window, "
            "and can you see a tree, grass, water or the sky behind the house?")  # ~80 tokens
CONTINUATION = 32  # teacher-forced tokens after the prompt
PHOTOS = ("square", "client1", "client2")  # bench.workloads' cat, astronaut and coffee photos: 1 tile each
WIDE_TILES = 2  # max_tiles of the 800x400 photo: 2 tiles + thumbnail = 3 tiles


@dataclass(frozen=True)
class Setting:
    """One way to compile and run an export on the CPU plugin."""

    precision: str  # export folder: fp32 | fp16 | int8 | int4
    inference: str = ""  # INFERENCE_PRECISION_HINT: "" = plugin default (bf16 on CPUs with avx512_bf16) | f32
    dq_group: int | None = None  # DYNAMIC_QUANTIZATION_GROUP_SIZE: 0 = off; None = unset (plugin default 32)
    kv: str = "u8"  # KV_CACHE_PRECISION of the language model

    @property
    def name(self) -> str:
        """'int8/bf16/dq128/kv-u8'."""
        dq = "" if self.dq_group is None else f"/dq{self.dq_group}"
        return f"{self.precision}/{self.inference or 'bf16'}{dq}/kv-{self.kv}"

    def plugin_config(self, lm: bool) -> dict:
        """compile_model properties for one part (the KV precision only concerns the language model)."""
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if self.inference:
            config["INFERENCE_PRECISION_HINT"] = self.inference
        if self.dq_group is not None:
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(self.dq_group)
        if lm:
            config["KV_CACHE_PRECISION"] = self.kv
        return config


REFERENCE = Setting("fp32", "f32", 0, "f32")
GRID = [
    Setting("fp32"),  # bf16 inference alone
    Setting("fp16"),
    *[Setting("int8", inf, dq) for inf in ("", "f32") for dq in (0, 32, 128)],
    Setting("int8", "", 128, "f32"),  # the u8 KV cache alone, against the row above with kv-u8
    *[Setting("int4", "", dq) for dq in (0, 32, 128)],
    Setting("int4", "f32", 128),
]


@dataclass
class Inputs:
    """Pixel values of the test photos."""

    photos: list  # (1, 3, 448, 448) float32 each
    wide: np.ndarray  # (3, 3, 448, 448)


@dataclass
class Probe:
    """The teacher-forced language-model input, built from the reference's outputs."""

    prompt_ids: np.ndarray  # (P,) the question about one 1-tile photo, ChatML, ending with the assistant cue
    continuation: np.ndarray  # (C,) the reference's greedy tokens
    lm_inputs: np.ndarray  # (P + C - 1, hidden) reference embeddings of prompt + continuation[:-1]


@dataclass
class Outputs:
    """What one configuration produced on the inputs."""

    vision: list  # (tiles * 256, hidden) per photo, then the wide photo
    prefill: np.ndarray  # (C, vocab) logits predicting the continuation, one prefill
    decode: np.ndarray  # (C, vocab) the same, prompt prefill then one token at a time
    first: np.ndarray  # (photos, vocab) last-position logits of each photo's prompt, own embeddings


def load_inputs(folder: Path) -> Inputs:
    """The benchmark photos (written once from scikit-image) as pixel values."""
    from PIL import Image

    from bench.workloads import write_images
    from runtime.images import preprocess

    paths = write_images(folder)
    rgb = [Image.open(paths[name]).convert("RGB") for name in PHOTOS]
    wide = Image.open(paths["wide"]).convert("RGB")
    return Inputs([preprocess(img, 1) for img in rgb], preprocess(wide, WIDE_TILES))


class Parts:
    """An export's three parts compiled with one setting, each on first use; close() releases them."""

    def __init__(self, core, folder: Path, setting: Setting):
        self.core, self.folder, self.setting = core, folder, setting
        self._compiled: dict = {}
        self._lm_request = None

    def _model(self, part: str):
        if part not in self._compiled:
            path = self.folder / f"{PARTS[part]}.xml"
            self._compiled[part] = self.core.compile_model(path, "CPU", self.setting.plugin_config(part == "lm"))
        return self._compiled[part]

    def vision(self, pixels: np.ndarray) -> np.ndarray:
        """(tiles, 3, 448, 448) -> (tiles * 256, hidden) float32."""
        out = self._model("vision").create_infer_request().infer({0: pixels})[0]  # (tiles, 256, hidden)
        return np.array(out, dtype=np.float32).reshape(-1, out.shape[-1])

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(T,) -> (T, hidden) float32."""
        out = self._model("embeddings").create_infer_request().infer({0: ids[None].astype(np.int64)})[0]
        return np.array(out[0], dtype=np.float32)

    def lm(self):
        """The language model's infer request (one, reused), its KV state empty."""
        if self._lm_request is None:
            self._lm_request = self._model("lm").create_infer_request()
        self._lm_request.reset_state()
        return self._lm_request

    def lm_properties(self) -> dict:
        """The inference precision, dynamic-quantization group and KV precision the plugin applied."""
        lm = self._model("lm")
        return {k: _property_name(lm.get_property(k)) for k in
                ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "KV_CACHE_PRECISION")}

    def close(self) -> None:
        """Drop the compiled models (their weights and buffers)."""
        self._lm_request = None
        self._compiled.clear()
        gc.collect()


def _property_name(value) -> str:
    """ov.Type -> 'bf16'; anything else -> str."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def forward(request, embeds: np.ndarray, past: int) -> np.ndarray:
    """Append embeds (T, hidden) after `past` cached positions; every position's logits (T, vocab), a view."""
    from runtime.backends.openvino_backend import lm_feed

    request.infer(lm_feed(embeds[None], past))
    return request.get_tensor("logits").data[0]


def decode(request, prompt: np.ndarray, steps: int, next_embeds) -> np.ndarray:
    """Prefill prompt (P, hidden), then feed next_embeds(i, logits) (1, hidden) one at a time; the
    logits (steps, vocab) of the prompt's last position and of each fed token but the last."""
    rows = [forward(request, prompt, 0)[-1].copy()]
    for i in range(steps - 1):
        rows.append(forward(request, next_embeds(i, rows[-1]), prompt.shape[0] + i)[-1].copy())
    return np.stack(rows)


def with_image(parts: Parts, ids: np.ndarray, image_rows: np.ndarray, img_context: int) -> np.ndarray:
    """Embeddings of ids with the `<IMG_CONTEXT>` positions replaced by the image's rows, as the runtime does."""
    embeds = parts.embed(ids)  # (T, hidden)
    embeds[np.flatnonzero(ids == img_context)] = image_rows
    return embeds


def make_probe(parts: Parts, prompt_ids: np.ndarray, image_rows: np.ndarray, img_context: int) -> Probe:
    """The reference's greedy continuation of the prompt and the teacher-forced input built from it."""
    prompt = with_image(parts, prompt_ids, image_rows, img_context)
    tokens: list[int] = []

    def greedy(i: int, logits: np.ndarray) -> np.ndarray:
        tokens.append(int(logits.argmax()))
        return parts.embed(np.array(tokens[-1:]))

    last = decode(parts.lm(), prompt, CONTINUATION, greedy)[-1]
    continuation = np.array(tokens + [int(last.argmax())], dtype=np.int64)
    lm_inputs = np.concatenate([prompt, parts.embed(continuation[:-1])])
    return Probe(prompt_ids, continuation, lm_inputs)


def run_outputs(parts: Parts, inputs: Inputs, probe: Probe, img_context: int, vision=None) -> Outputs:
    """Everything one configuration computes; vision features are reused when given."""
    if vision is None:
        vision = [parts.vision(p) for p in [*inputs.photos, inputs.wide]]
    p = probe.prompt_ids.size
    prefill = forward(parts.lm(), probe.lm_inputs, 0)[p - 1:].copy()
    step_inputs = probe.lm_inputs[p:]
    teacher = decode(parts.lm(), probe.lm_inputs[:p], CONTINUATION, lambda i, _: step_inputs[i:i + 1])
    first = np.stack([forward(parts.lm(), with_image(parts, probe.prompt_ids, v, img_context), 0)[-1].copy()
                      for v in vision[:len(inputs.photos)]])
    return Outputs(vision, prefill, teacher, first)


# ---------------------------------------------------------------- metrics


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref||."""
    a, ref = a.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300))


def mean_cosine(a: np.ndarray, ref: np.ndarray) -> float:
    """Mean over rows (tokens) of the cosine similarity of a's row with ref's."""
    a, ref = a.astype(np.float64), ref.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(ref, axis=-1), 1e-300)
    return float(np.mean(np.sum(a * ref, axis=-1) / norms))


def top1_agreement(logits: np.ndarray, ref: np.ndarray) -> float:
    """Share of rows whose argmax is the reference's."""
    return float(np.mean(logits.argmax(-1) == ref.argmax(-1)))


def mean_kl(logits: np.ndarray, ref: np.ndarray) -> float:
    """Mean over rows of KL(softmax(ref) || softmax(logits)), in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lr, lc = log_softmax(ref), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(lr) * (lr - lc), axis=-1)))


def top1_margin(ref: np.ndarray) -> float:
    """Median gap between the reference's largest and second-largest logit (small gaps make top-1 fragile)."""
    top = np.sort(ref, axis=-1)[:, -2:]
    return float(np.median(top[:, 1] - top[:, 0]))


def compare(out: Outputs, ref: Outputs) -> dict:
    """The figures of one configuration against the reference."""
    n = len(out.vision) - 1
    row = {"vision_rel_l2_1tile": float(np.mean([rel_l2(a, r) for a, r in zip(out.vision[:n], ref.vision[:n])])),
           "vision_rel_l2_3tile": rel_l2(out.vision[n], ref.vision[n]),
           "vision_cosine": float(np.mean([mean_cosine(a, r) for a, r in zip(out.vision, ref.vision)]))}
    for mode in ("prefill", "decode"):
        a, r = getattr(out, mode), getattr(ref, mode)
        row.update({f"{mode}_rel_l2": rel_l2(a, r), f"{mode}_top1": top1_agreement(a, r), f"{mode}_kl": mean_kl(a, r)})
    row.update(first_top1=top1_agreement(out.first, ref.first), first_kl=mean_kl(out.first, ref.first),
               photos=len(out.first))
    return row


# ---------------------------------------------------------------- one model


def vision_key(folder: Path, setting: Setting) -> tuple:
    """Identifies the vision features a setting computes: the vision files' hashes and the plugin config
    (int4 exports carry the same int8 vision model as int8 exports)."""
    from runtime.manifest import read_manifest

    manifest = read_manifest(folder)
    try:
        digest = tuple(manifest.files[PARTS["vision"] + ext]["sha256"] for ext in (".xml", ".bin"))
    except (AttributeError, KeyError, TypeError):  # no manifest, or one without hashes
        digest = (str(folder),)
    return digest, tuple(sorted(setting.plugin_config(False).items()))


def measure_model(cache: str, model: str, settings: list[Setting], inputs: Inputs, progress=print) -> dict:
    """Run the reference and each setting on one model; its rows and a description of the probe."""
    import openvino as ov

    from runtime.prompts import build_prompt
    from runtime.settings import artifact_dir
    from runtime.tokenizer import TextTokenizer

    core, folder = ov.Core(), lambda precision: artifact_dir(cache, model, precision)
    tok = TextTokenizer(folder("fp32"))
    ctx = tok.special.img_context
    prompt_ids = np.array(tok.encode(build_prompt([("user", QUESTION, [1])])), dtype=np.int64)
    t0 = time.perf_counter()
    parts = Parts(core, folder("fp32"), REFERENCE)
    try:
        vision = [parts.vision(p) for p in [*inputs.photos, inputs.wide]]
        probe = make_probe(parts, prompt_ids, vision[0], ctx)
        ref = run_outputs(parts, inputs, probe, ctx, vision)
        rows = [_row(REFERENCE, parts, compare(ref, ref), time.perf_counter() - t0, reference=True)]
    finally:
        parts.close()
    progress(f"quality: {model} reference done in {time.perf_counter() - t0:.0f} s")
    cached = {vision_key(folder("fp32"), REFERENCE): vision}
    for setting in settings:
        rows.append(_measure_setting(core, folder(setting.precision), setting, inputs, probe, ref, cached, ctx))
        progress(f"quality: {model} {setting.name}: " + _summary(rows[-1]))
    return {"model": model, "prompt_tokens": int(prompt_ids.size), "continuation_tokens": CONTINUATION,
            "vocab": int(ref.prefill.shape[-1]), "ref_top1_margin": top1_margin(ref.decode), "rows": rows}


def _measure_setting(core, folder: Path, setting: Setting, inputs: Inputs, probe: Probe, ref: Outputs,
                     cached: dict, ctx: int) -> dict:
    """One configuration's row; its vision features go into `cached` for settings that compute the same."""
    t0 = time.perf_counter()
    parts = Parts(core, folder, setting)
    key = vision_key(folder, setting)
    try:
        out = run_outputs(parts, inputs, probe, ctx, cached.get(key))
        cached[key] = out.vision
        return _row(setting, parts, compare(out, ref), time.perf_counter() - t0)
    finally:
        parts.close()


def _row(setting: Setting, parts: Parts, figures: dict, seconds: float, reference: bool = False) -> dict:
    return {"name": setting.name, "reference": reference, **asdict(setting), "applied": parts.lm_properties(),
            **figures, "seconds": round(seconds, 1)}


def _summary(row: dict) -> str:
    return (f"vision rel L2 {row['vision_rel_l2_1tile']:.3g}, LM decode rel L2 {row['decode_rel_l2']:.3g}, "
            f"top-1 {row['decode_top1']:.2f}, KL {row['decode_kl']:.3g} ({row['seconds']:.0f} s)")


# ---------------------------------------------------------------- report

COLUMNS = [("vision_rel_l2_1tile", "vision rel. L2, 1 tile"), ("vision_rel_l2_3tile", "vision rel. L2, 3 tiles"),
           ("vision_cosine", "vision cos"), ("prefill_rel_l2", "LM prefill rel. L2"),
           ("prefill_top1", "prefill top-1"), ("prefill_kl", "prefill KL"), ("decode_rel_l2", "LM decode rel. L2"),
           ("decode_top1", "decode top-1"), ("decode_kl", "decode KL"), ("first_top1", "e2e 1st token")]


def _cell(key: str, row: dict) -> str:
    value = row[key]
    if key == "first_top1":
        return f"{round(value * row['photos'])}/{row['photos']}"
    if key.endswith("top1"):
        return f"{value:.2f}"
    if key == "vision_cosine":
        return f"{value:.6f}"
    return "0" if value == 0 else f"{value:.2e}"


def table(result: dict) -> str:
    """One model's markdown table."""
    head = ["weights", "inference", "DQ group", "KV", *(title for _, title in COLUMNS), "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        dq = "–" if r["dq_group"] is None else ("0 (off)" if r["dq_group"] == 0 else str(r["dq_group"]))
        inference = r["applied"]["INFERENCE_PRECISION_HINT"] + ("" if r["inference"] else " (default)")
        first = f"**{r['precision']} (reference)**" if r["reference"] else r["precision"]
        cells = [first, inference, dq, r["kv"], *(_cell(k, r) for k, _ in COLUMNS), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: dict) -> str:
    """The whole quality.md."""
    out = ["## Numerical cost of the speed options", "",
           (f"Error of each configuration against the fp32 reference (fp32 export, f32 inference, dynamic "
            f"quantization off, f32 KV cache), OpenVINO {results['openvino']} CPU plugin on {results['cpu']}, "
            f"{results['created']}; `python -m bench.quality` took {results.get('runtime_s', 0):.0f} s."), ""]
    for name, result in results["models"].items():
        out += [f"### `{name}`", "",
                (f"Prompt: one 1-tile photo and a question, {result['prompt_tokens']} tokens, then "
                 f"{result['continuation_tokens']} teacher-forced tokens (the reference's greedy ones); "
                 f"vocabulary {result['vocab']}; median top-1/top-2 logit gap of the reference "
                 f"{result['ref_top1_margin']:.3g}."), "", table(result), ""]
    return "\n".join(out + NOTES + [""])


NOTES = [
    ("- *vision*: features of 3 photos at 1 tile and one 800x400 photo at 3 tiles; relative L2 error "
     "||a - r|| / ||r|| and the mean per-token cosine similarity."),
    ("- *LM prefill / decode*: the logits predicting the 32 teacher-forced tokens, with the reference's input "
     "embeddings, so only the language model's error counts. *prefill*: the whole sequence at once; *decode*: "
     "prompt prefill, then one token at a time as generation runs (a u8 KV cache only changes this one: a "
     "single prefill attends to its own fresh keys and values). KL(ref || cfg) in nats, mean over positions; "
     "top-1: share of positions whose argmax is the reference's."),
    ("- *e2e 1st token*: each configuration's own vision, embeddings and LM on the question about each 1-tile "
     "photo; the photos whose first generated token is the reference's."),
    ("- DQ group: DYNAMIC_QUANTIZATION_GROUP_SIZE (activation quantization to int8 for int8/int4 weights; "
     "plugin default 32, 0 = off); '–' = not set, it does not apply to fp32/fp16 weights. Inference "
     "'(default)' is the plugin's own choice (bf16 on CPUs with avx512_bf16). The int4 export's vision and "
     "embedding models are the int8 export's (same files), hence the same vision errors."),
    ("- Random weights have no outlier channels, so the errors of activation quantization (DQ) and of bf16 "
     "are likely understated against the real checkpoint; near-uniform random logits make top-1 agreement "
     "fragile (see the logit gap above). The tiny model's rows test the same code path at small sizes."),
]


def write_all(results: dict, out_dir: Path) -> None:
    """quality.json and quality.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "quality.md").write_text(render(results))


# ---------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags, each defaulting to its environment variable."""
    e = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=e("HF_CACHE_DIR") or "data/model_cache",
                   help="HF_CACHE_DIR: where the exports live (default data/model_cache)")
    p.add_argument("--models", default=e("BENCH_QUALITY_MODELS") or DEFAULT_MODELS,
                   help=f"BENCH_QUALITY_MODELS: comma-separated models (default {DEFAULT_MODELS})")
    p.add_argument("--out-dir", type=Path, default=Path(e("BENCH_OUT_DIR") or HERE),
                   help="BENCH_OUT_DIR: where quality.json / .md go (default bench/)")
    p.add_argument("--report-only", action="store_true", help="rewrite quality.md from quality.json")
    return p.parse_args(argv)


def ensure_exports(model: str, cache: str) -> None:
    """Run `python -m export` for each precision the grid needs (it skips finished exports)."""
    for precision in sorted({s.precision for s in [REFERENCE, *GRID]}):
        cmd = [sys.executable, "-m", "export", "--model", model, "--cache-dir", cache, "--precision", precision]
        if subprocess.run(cmd + ["--check"], check=False, capture_output=True).returncode != 0:
            print(f"quality: exporting {model} at {precision}", flush=True)
            subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    """Measure every model, write quality.json / quality.md, print the tables."""
    import openvino as ov

    args = parse_args(argv)
    if args.report_only:
        results = json.loads((args.out_dir / "quality.json").read_text())
        write_all(results, args.out_dir)
        print(render(results))
        return 0
    cache = str(Path(args.cache_dir).resolve())
    t0 = time.perf_counter()
    inputs = load_inputs(HERE / "cache" / "images")
    results = {"created": time.strftime("%Y-%m-%d %H:%M"), "openvino": ov.get_version().split("-")[0],
               "cpu": f"{ov.Core().get_property('CPU', 'FULL_DEVICE_NAME')}, {os.cpu_count()} cores "
                      f"({platform.machine()})", "reference": asdict(REFERENCE), "models": {}}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            ensure_exports(model, cache)
        except subprocess.CalledProcessError:
            print(f"quality: export of {model} failed", file=sys.stderr)
            return 1
        results["models"][model] = measure_model(cache, model, GRID, inputs, lambda m: print(m, flush=True))
        results["runtime_s"] = round(time.perf_counter() - t0, 1)
        write_all(results, args.out_dir)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
