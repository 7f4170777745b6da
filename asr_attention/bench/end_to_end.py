"""End-to-end transcription benchmark (issue 32): real Whisper weights, real audio, our pipeline against
transformers' in the same process.

    python -m asr_attention.bench.end_to_end --models whisper whisper_base --out benchmarks/end_to_end/

For each model (a conf/model name: `whisper` is tiny.en), each decoder -- transformers' `generate` with its static
cache (compiled by transformers) and its dynamic one, then ours with each variant at the decoder sites (`mha` the
loaded weights; `mla` r = d/4 activation-aware, `gqa` 2 KV heads: conf/study/variant presets, calibrated on AN4 val;
`--run DIR` a trained run's best checkpoint, measured right after its model's rows, labelled run:<run_name>) --
each test set (AN4 test, vendored; speechocean762, `--manifest`) and
each batch size: the whole set transcribed in batches, audio already in memory, and timed from the waves to the
text (features, encoder, decoding, detokenising): RTFx = audio seconds / wall seconds, tokens/s, peak GPU memory
(max_memory_allocated, reset per row), WER (the scoring normaliser), and the utterances whose text differs from
transformers' (static cache) at the same batch size. Greedy decoding, no temperature fallback, the same suppress
rules and token limit on both sides (asr_attention/bench/e2e_pipelines.py).

Before each row, every batch shape it will use (the batch size, and the smaller last batch) runs once untimed:
transformers compiles its static step per shape, our fast path captures a CUDA graph per shape; that time is
reported as warmup_s. After the timed pass a split pass runs the set again with each stage timed on its own
(stages_s: ours features + encoder / decoding / text, transformers' features / encoder + decoding / text; the
encoders are the same computation, so ours minus transformers' first two stages isolates decoding). Batch 1 reads
the first --limit-batch1 utterances of each set. The JSON is rewritten after every row (a run cut short keeps what
it measured), with the Markdown table and the plot beside it (end_to_end_report.py). Runs on a CPU too (tests:
tiny.en, two utterances, `--hf dynamic`).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from asr_attention.data import load_audio, read_an4, read_manifest
from asr_attention.generation.token_limit import token_limit
from asr_attention.reports.zero_shot import wer

from .e2e_pipelines import HFPipeline, OursPipeline
from .end_to_end_report import write_report
from .generate import _git_commit, _version

DATA = Path(__file__).resolve().parents[1] / "data"
SPEECHOCEAN = DATA / "speechocean762_corpus" / "manifest.tsv"
VARIANT_PRESETS = {"mha": "mha", "mla": "mla_d4_act", "gqa": "gqa_kv2", "linear": "linear_elu"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GIB = 2**30


@dataclass
class TestSet:
    name: str
    utt_ids: list[str]
    refs: list[str]
    waves: list[torch.Tensor]

    @property
    def seconds(self) -> list[float]:
        return [len(w) / 16000 for w in self.waves]

    def first(self, n: int | None) -> "TestSet":
        return self if n is None else TestSet(self.name, self.utt_ids[:n], self.refs[:n], self.waves[:n])


def read_set(name: str, manifest: Path, limit: int | None) -> TestSet:
    if name == "an4":
        utts = read_an4("test")
    elif name == "speechocean762":
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no speechocean762 manifest there; pass --manifest PATH (or "
                                    "--sets an4)")
        utts = read_manifest(manifest)
    else:
        raise ValueError(f"--sets {name!r}: expected an4 or speechocean762")
    utts = utts[:limit] if limit else utts
    return TestSet(name, [u.utt_id for u in utts], [u.text for u in utts],
                   [load_audio(u.path, u.start, u.end) for u in utts])


# ---- the models --------------------------------------------------------------------------------------------------
def model_config(model: str, overrides: list[str] = ()):
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from asr_attention.training.run_model import CONF

    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose("train", overrides=[f"model={model}", *overrides])
    except HydraException as err:
        message = " ".join(str(err).split()).split(" Config search path")[0]
        raise ValueError(f"model={model} {' '.join(overrides)}: {message}") from None


def ours(model: str, variant: str, device: torch.device, dtype: torch.dtype,
         calibration_frames: int | None = None) -> tuple[object, dict]:
    """The backbone with `variant` at its default sites: mha as loaded (its decoder sites are MHA variants of the
    weights already), others converted as a training run converts (calibrated on AN4 val, calibration.frames
    encoder frames unless given)."""
    from asr_attention.training.experiment import build_datamodule_for, build_tokenizer_and_backbone, convert

    preset = VARIANT_PRESETS.get(variant, variant)
    cfg = model_config(model, [f"+study/variant={preset}"])
    tokenizer, backbone = build_tokenizer_and_backbone(cfg)
    backbone.to(device)
    info = {"preset": preset, "attention": dict(cfg.attention)}
    if cfg.attention.name != "mha":
        summary = convert(backbone, cfg.attention, build_datamodule_for(cfg, tokenizer, backbone),
                          calibration_frames or cfg.calibration.frames, cfg.seed)
        info["calibration"] = summary["calibration_data"]
    backbone.model.to(dtype)  # the log-mel front end stays fp32, as in training
    return backbone.eval(), info


def run_backbone(run: Path, device: torch.device, dtype: torch.dtype):
    from asr_attention.training.run_model import load_run

    _, _, backbone = load_run(run)
    backbone.to(device)
    backbone.model.to(dtype)
    return backbone.eval()


def trained_runs(runs: list[str], models: list[str]) -> list[tuple[str, str, Path]]:
    """(conf/model name, row label, folder) of each --run: the name --models spells its model with (a run's config
    says "whisper-base" where --models says whisper_base), so its rows sit beside that model's transformers rows
    and get their `x hf`; the label is the run's run_name (a sweep's folder is only "0")."""
    from asr_attention.training.run_model import run_config

    out = []
    for run in runs:
        cfg = run_config(Path(run))
        model = next((m for m in models if model_config(m).model.name == cfg.model.name), cfg.model.name)
        out.append((model, f"run:{cfg.get('run_name') or Path(run).name}", Path(run)))
    return out


def reference(model: str, device: torch.device, dtype: torch.dtype):
    """transformers' own model and the checkpoint's tokens, from the same source."""
    from asr_attention.backbones.whisper.load import load_pretrained

    hf, tokens = load_pretrained(model_config(model).model)
    return hf.to(device, dtype).eval(), tokens


def reference_token_limit(hf, tokens) -> int:
    """transformers' model's own token limit: its target positions less the prompt (as token_limit for ours)."""
    return hf.config.max_target_positions - len(tokens.prompt)


# ---- the measurements ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def transcribe_all(pipeline, waves: list[torch.Tensor], batch: int) -> list[tuple[str, int, bool]]:
    out = []
    for start in range(0, len(waves), batch):
        out += pipeline(waves[start: start + batch])
    return out


def measure(pipeline, data: TestSet, batch: int, device: torch.device) -> dict:
    shapes = sorted({min(batch, len(data.waves)), len(data.waves) % batch} - {0}, reverse=True)
    sync(device)
    began = time.perf_counter()
    for shape in shapes:  # transformers compiles, our fast path captures: once per shape, untimed
        pipeline(data.waves[:shape])
    sync(device)
    warmup = time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    began = time.perf_counter()
    out = transcribe_all(pipeline, data.waves, batch)
    sync(device)
    wall = time.perf_counter() - began
    texts, tokens, audio = [t for t, _, _ in out], sum(n for _, n, _ in out), sum(data.seconds)
    row = {"utterances": len(texts), "audio_s": audio, "wall_s": wall, "rtfx": audio / wall, "tokens": tokens,
           "tokens_per_s": tokens / wall, "warmup_s": warmup, "shapes": shapes,
           "truncated": sum(not finished for _, _, finished in out),
           "wer": 100 * wer([{"hyp": h, "ref": r} for h, r in zip(texts, data.refs)], normalised=True)}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    return row | {"stages_s": split_pass(pipeline, data, batch, device), "texts": texts}


def split_pass(pipeline, data: TestSet, batch: int, device: torch.device) -> dict[str, float]:
    """Where the time goes: the whole set again, each stage of the pipeline timed on its own (synchronised around
    it, so the sum runs a little over the timed pass's wall time)."""
    stages = pipeline.stages()
    split = dict.fromkeys(stages, 0.0)
    for start in range(0, len(data.waves), batch):
        out = data.waves[start: start + batch]
        for name, stage in stages.items():
            sync(device)
            began = time.perf_counter()
            out = stage(out)
            sync(device)
            split[name] += time.perf_counter() - began
    return split


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda but no GPU is visible: pass --device cpu")
        self.dtype = DTYPES[args.dtype]
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        card = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        commit = args.commit or _git_commit()
        self.name = args.name or f"{card.replace(' ', '_')}_{commit}"
        self.data = {"meta": {
            "card": card, "torch": torch.__version__, "transformers": _version("transformers"), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "dtype": args.dtype, "command": args.command_line, "limit_batch1": args.limit_batch1,
            "decoding": "greedy, no temperature fallback; the checkpoint's suppress lists; token limit: "
                        + (str(args.max_tokens) if args.max_tokens else "the model's (448 positions less the prompt)"),
        }, "sets": [], "models": [], "rows": []}
        self.started = time.monotonic()
        self.hf_texts: dict[tuple, list[str]] = {}  # (model, set, batch) -> transformers' static (else dynamic) texts

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)

    def save(self) -> None:
        path = self.out / f"{self.name}.json"
        tmp = self.out / f"{self.name}.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(path)
        write_report(self.data, self.out / self.name, with_plot=False)

    def rows(self, model: str, decoder: str, pipeline, sets: list[TestSet]) -> None:
        for data in sets:
            for batch in self.args.batches:
                subset = data.first(self.args.limit_batch1 if batch == 1 else None)
                row = {"model": model, "decoder": decoder, "set": data.name, "batch": batch}
                try:
                    row |= measure(pipeline, subset, batch, self.device)
                except Exception as err:  # noqa: BLE001 -- a row that cannot run is recorded; the others still run
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    traceback.print_exc()
                    self.log(f"{model} {decoder} {data.name} batch {batch}: {row['error']}")
                finally:
                    pipeline.release()
                    free(self.device)
                if "texts" in row:
                    self.compare(row, subset)
                self.data["rows"].append(row)
                self.save()
                if "error" not in row:
                    self.log(f"{model} {decoder} {data.name} batch {batch}: RTFx {row['rtfx']:,.1f}, "
                             f"{row['tokens_per_s']:,.0f} tokens/s, WER {row['wer']:.2f} %, warm-up "
                             f"{row['warmup_s']:.1f} s" + (f", differ {row['differ_from_hf']}"
                                                           if "differ_from_hf" in row else ""))

    def compare(self, row: dict, data: TestSet) -> None:
        """Texts against transformers' at the same batch size (its static cache's where measured); the first
        differing utterances listed."""
        texts = row.pop("texts")
        key = (row["model"], row["set"], row["batch"])
        if row["decoder"].startswith("hf-"):
            self.hf_texts.setdefault(key, texts)
            if self.hf_texts[key] is texts:
                return
        theirs = self.hf_texts.get(key)
        if theirs is None:
            return
        differ = [i for i, (a, b) in enumerate(zip(texts, theirs)) if a != b]
        row["differ_from_hf"] = len(differ)
        row["differing"] = [{"utt_id": data.utt_ids[i], "ours": texts[i], "hf": theirs[i]} for i in differ[:10]]

    def run(self) -> dict:
        args = self.args
        sets = [read_set(name, Path(args.manifest), args.limit) for name in args.sets]
        self.data["sets"] = [{"name": s.name, "utterances": len(s.waves), "audio_s": sum(s.seconds)} for s in sets]
        self.log("sets: " + ", ".join(f"{s.name} {len(s.waves)} utts" for s in sets))
        runs = trained_runs(args.run, args.models)
        for model in args.models:
            if args.hf:
                hf, tokens = reference(model, self.device, self.dtype)
                limit = args.max_tokens or reference_token_limit(hf, tokens)
                self.data["models"].append({"model": model, "max_tokens": limit, "prompt": tokens.prompt})
                for cache in args.hf:
                    self.rows(model, f"hf-{cache}", HFPipeline(hf, tokens, limit, cache), sets)
                del hf
                torch._dynamo.reset()  # transformers' compiled steps and their CUDA-graph pools
                free(self.device)
            for variant in args.variants:
                began = time.monotonic()
                backbone, info = ours(model, variant, self.device, self.dtype, args.calibration_frames)
                pipeline = self.pipeline(backbone)
                self.data["models"].append({"model": model, "decoder": variant, **info,
                                            "max_tokens": pipeline.options.max_tokens,
                                            "build_s": time.monotonic() - began})
                self.rows(model, variant, pipeline, sets)
                del pipeline
                del backbone
                free(self.device)
            self.trained_rows([r for r in runs if r[0] == model], sets)  # before the next model: a cut run keeps them
        self.trained_rows([r for r in runs if r[0] not in args.models], sets)
        self.save()
        write_report(self.data, self.out / self.name, with_plot=True)
        self.log(f"wrote {self.out / self.name}.json, .md" + (", .png" if self.data["rows"] else ""))
        return self.data

    def trained_rows(self, runs: list[tuple[str, str, Path]], sets: list[TestSet]) -> None:
        for model, label, run in runs:
            backbone = run_backbone(run, self.device, self.dtype)
            self.rows(model, label, self.pipeline(backbone), sets)
            del backbone
            free(self.device)

    def pipeline(self, backbone) -> OursPipeline:
        return OursPipeline(backbone, token_limit(backbone, self.args.max_tokens), self.args.fast, self.args.compile)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m asr_attention.bench.end_to_end", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["whisper"], help="conf/model names (whisper: tiny.en)")
    p.add_argument("--variants", nargs="*", default=["mha", "mla", "gqa"],
                   help=f"ours: {list(VARIANT_PRESETS)} or any conf/study/variant preset")
    p.add_argument("--hf", nargs="*", default=["static", "dynamic"], choices=["static", "dynamic"],
                   help="transformers' generate with these caches (none: skip it)")
    p.add_argument("--run", nargs="*", default=[], help="trained run folders: their best checkpoints, as ours")
    p.add_argument("--sets", nargs="+", default=["an4", "speechocean762"], choices=["an4", "speechocean762"])
    p.add_argument("--manifest", default=str(SPEECHOCEAN), help="speechocean762's manifest (default: vendored)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--limit-batch1", type=int, default=40, help="batch 1 reads the first N utterances of each set")
    p.add_argument("--limit", type=int, default=None, help="the first N utterances of each set (smoke tests)")
    p.add_argument("--max-tokens", type=int, default=None, help="token limit (default: the model's)")
    p.add_argument("--calibration-frames", type=int, default=None,
                   help="encoder frames of AN4 val that calibrate a conversion (default: conf/train.yaml's)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--fast", default="auto", help="ours: model.decoding.fast (auto, true, false)")
    p.add_argument("--compile", action="store_true", help="ours: the decode step through torch.compile too")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--commit", default="", help="recorded in the JSON (the device copy may have no .git)")
    p.add_argument("--name", default="", help="file name without suffix (default: <card>_<commit>)")
    p.add_argument("--out", default="benchmarks/end_to_end", help="folder for <name>.json, .md, .png")
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batches) or args.limit_batch1 < 1 or (args.limit is not None and args.limit < 1):
        p.error("--batches, --limit-batch1 and --limit must be >= 1")
    from asr_attention.training.run_model import checkpoint_file

    for run in args.run:  # before any row is measured, not after the last (a stopped run keeps no checkpoint)
        try:
            checkpoint_file(Path(run))
        except FileNotFoundError as err:
            p.error(f"--run {run}: {err}")
    return args


def main(argv=None) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()  # generate's per-call notes about pad == eos
    args = parse_args(argv)
    args.command_line = " ".join(["python -m asr_attention.bench.end_to_end",
                                  *(argv if argv is not None else sys.argv[1:])])
    try:
        return Bench(args).run()
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"end_to_end: {err}")


if __name__ == "__main__":
    main()
