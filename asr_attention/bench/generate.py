"""Generation benchmark (issue 15): Whisper decoding with converted caches against transformers' `generate`.

    python -m asr_attention.bench.generate --sizes large-v3 --out $OUT/generate_large-v3 --budget 420

For each Whisper size (random weights, bf16, one 30-s window: 1500 encoder frames) and each decoder -- transformers'
generate with its static and dynamic cache (sdpa), then ours with each variant on the decoder sites -- at each
batch: tokens/s for `--new-tokens` forced tokens (<|endoftext|> suppressed: every row decodes exactly that many),
time to first token, time per token, peak memory, the caches' bytes (measured from the tensors, and analytic), the
HBM-bound limit and the row's fraction of it. Then the largest batch that fits on the card (doubling, then
bisection; out-of-memory caught). Rows run most important first and stop at `--budget` seconds; the JSON is
rewritten after every row, so a run cut short keeps what it measured. Needs only torch and transformers
(matplotlib for the plot, made later from the JSON if it is missing: `python -m asr_attention.bench.generate_report`).

Timing: host wall clock between CUDA synchronisations (what a caller of generate waits), median of --repeats runs
after one warm-up run (transformers compiles its static-cache step then). Time to first token: the same decoder
asked for one token (encoder output given; the encoder is timed on its own). Decoding reads the encoder output of
the same model, computed once per size for `--memory-batch` utterances and repeated to fill larger batches.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import subprocess
import time
import traceback
from pathlib import Path

import torch

from asr_attention.generation.decoders import HFGenerate, OursGreedy, OursStatic
from asr_attention.generation.step_bytes import (
    H200_BYTES_PER_S,
    decoder_weight_bytes,
    limit_tokens_per_s,
    mean_step_bytes,
)
from asr_attention.generation.whisper_sizes import ENCODER_FRAMES, PROMPT, SIZES, random_whisper

from .generate_report import write_report

GIB = 2**30
# name -> (attention config with latent_dim as a fraction of d, sites); None: transformers' generate. A "-graph"
# name: the same variant with preallocated caches and, on CUDA, the decode step replayed as a CUDA graph; a
# "-compiled" one: that step through torch.compile before the capture.
BOTH = ("decoder_self", "cross")
VARIANTS = {
    "mha": ({"name": "mha"}, BOTH),
    "mla": ({"name": "mla", "latent_dim": 0.25}, BOTH),
    "gqa": ({"name": "gqa", "num_kv_heads": 2}, BOTH),
    "linear": ({"name": "linear", "feature_map": "elu"}, BOTH),
    "mla-self": ({"name": "mla", "latent_dim": 0.25}, ("decoder_self",)),
    # cross sites over the encoder output itself (exact, one cache for all: attention.cross_latent=memory)
    "mla-memory": ({"name": "mla", "latent_dim": 0.25, "cross_latent": "memory"}, BOTH),
}
DECODERS = {"hf-static": None, "hf-dynamic": None, **VARIANTS,
            **{f"{k}-{how}": v for how in ("graph", "compiled") for k, v in VARIANTS.items()}}
DEFAULT_DECODERS = ["hf-static", "hf-dynamic", "mha-graph", "mla-graph", "mha", "mla", "gqa-graph", "gqa",
                    "linear-graph", "linear", "mla-self-graph"]
DEFAULT_MAX_BATCH = ["hf-dynamic", "mha", "mla", "gqa"]  # linear: no cache to compare, activations bound it
WARMUP_TOKENS = 8  # enough for transformers to compile its static step and for our graph capture


class OutOfTime(Exception):
    pass


def out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_s(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build_decoder(name: str, model, new_tokens: int):
    if name not in DECODERS:
        raise ValueError(f"decoder {name!r} is not one of {list(DECODERS)}")
    if DECODERS[name] is None:
        return HFGenerate(model, name.removeprefix("hf-"), new_tokens)
    attention, sites = DECODERS[name]
    attention = dict(attention)
    if "latent_dim" in attention:
        attention["latent_dim"] = int(attention["latent_dim"] * model.config.d_model)
    attention = None if attention["name"] == "mha" else attention  # the loaded MHA sites: the same weights
    if name.endswith(("-graph", "-compiled")):
        return OursStatic(model, attention, sites, max_steps=new_tokens, compile=name.endswith("-compiled"))
    return OursGreedy(model, attention, sites)


class Bench:
    """One process, one card: the rows, the clock and the JSON."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda but no GPU is visible: pass --device cpu (with --sizes test)")
        self.start = time.monotonic()
        self.out = Path(args.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        card = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.data = {
            "meta": {"card": card, "torch": torch.__version__, "transformers": _version("transformers"),
                     "commit": args.commit or _git_commit(), "date": datetime.datetime.now(datetime.timezone.utc)
                     .strftime("%Y-%m-%d %H:%M UTC"), "dtype": args.dtype, "new_tokens": args.new_tokens,
                     "prompt_tokens": len(PROMPT), "encoder_frames": ENCODER_FRAMES,
                     "bandwidth_bytes_per_s": args.bandwidth, "repeats": args.repeats, "budget_s": args.budget,
                     "command": args.command_line},
            "encoder": [], "rows": [], "max_batch": [],
        }

    # ---- bookkeeping -------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check_time(self) -> None:
        if self.elapsed() > self.args.budget:
            raise OutOfTime(f"time budget of {self.args.budget:.0f} s spent")

    def save(self) -> None:
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.out.with_suffix(".json"))
        write_report([self.data], self.out, with_plot=False)

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)

    # ---- measurements ------------------------------------------------------------------------------------------
    def encoder_output(self, model, size: str) -> torch.Tensor:
        """The encoder over `--memory-batch` 30-s windows of random log-mel input; timed at batch 1 and in full."""
        n = self.args.memory_batch
        mels = torch.randn(n, model.config.num_mel_bins, 2 * ENCODER_FRAMES, device=self.device, dtype=model.dtype)
        with torch.no_grad():
            for batch in sorted({1, n}):
                run = lambda: model.model.encoder(mels[:batch]).last_hidden_state  # noqa: E731
                run()
                ms = 1000 * statistics.median(timed_s(run, self.device) for _ in range(self.args.repeats))
                self.data["encoder"].append({"size": size, "batch": batch, "ms": ms})
                self.log(f"{size} encoder batch {batch}: {ms:.1f} ms")
            return model.model.encoder(mels).last_hidden_state

    def resident(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def row(self, size: str, name: str, decoder, memory_all: torch.Tensor, batch: int) -> dict:
        args = self.args
        row = {"size": size, "decoder": name, "batch": batch}
        memory = _fill(memory_all, batch)
        steps = args.new_tokens
        try:
            decoder(memory, min(WARMUP_TOKENS, steps))  # transformers compiles its static step, ours captures here
            decoder.release()
            free(self.device)
            ttft = statistics.median(timed_s(lambda: decoder(memory, 1), self.device) for _ in range(args.repeats))
            decoder.release()
            free(self.device)
            times = []
            for i in range(args.repeats):
                if i and self.elapsed() > args.budget:  # out of time: keep the runs made (`runs` says how many)
                    break
                before = self.resident()
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                tokens = None
                def run():
                    nonlocal tokens
                    tokens = decoder(memory, steps)
                times.append(timed_s(run, self.device))
                if self.device.type == "cuda" and i == 0:
                    # the row's own footprint: its model's weights, its encoder output, what decoding allocated
                    row["peak_gib"] = (torch.cuda.max_memory_allocated(self.device) - before + decoder.held_bytes()
                                       + _bytes(decoder.model) + memory.numel() * memory.element_size()) / GIB
            if tuple(tokens.shape) != (batch, steps):
                raise RuntimeError(f"{name} emitted {tuple(tokens.shape)} tokens, expected {(batch, steps)}")
            total = statistics.median(times)
            row.update(self.accounting(decoder, batch, steps))
            row.update(
                runs=len(times), total_s=total, ttft_ms=1000 * ttft,
                per_token_ms=1000 * (total - ttft) / max(steps - 1, 1), tokens_per_s=batch * steps / total,
                distinct_tokens=int(tokens.unique().numel()),
            )
            row["limit_fraction"] = row["tokens_per_s"] / row["limit_tokens_per_s"]
            if isinstance(decoder, OursStatic):
                row["cuda_graph"] = decoder.graph
        except Exception as err:  # noqa: BLE001 - a row that cannot run is recorded; the others still run
            row["error"] = "out of memory" if out_of_memory(err) else f"{type(err).__name__}: {str(err)[:300]}"
            if not out_of_memory(err):
                traceback.print_exc()
        finally:
            decoder.release()
            del memory
            free(self.device)
        return row

    def accounting(self, decoder, batch: int, steps: int) -> dict:
        """Cache bytes measured (the last run's tensors) and analytic; bytes one step reads; the HBM-bound limit."""
        tokens = len(PROMPT) + steps - 1
        measured = decoder.cache_nbytes()
        analytic = decoder.cache_bytes(batch, tokens, ENCODER_FRAMES)
        weights = decoder_weight_bytes(decoder.decoder)
        step = mean_step_bytes(weights, lambda t: decoder.cache_bytes(batch, t, ENCODER_FRAMES, read=True),
                               len(PROMPT), steps)
        return {"cache_measured": measured, "cache_analytic": analytic,
                "cache_mib": sum(measured.values()) / 2**20, "decoder_weight_bytes": weights,
                "step_bytes": step, "limit_tokens_per_s": limit_tokens_per_s(batch, step, self.args.bandwidth)}

    def fits(self, decoder, memory_all, batch: int) -> tuple[bool, float | None]:
        """One full decode at `batch`: (fits, tokens/s of that run)."""
        memory = None
        try:
            memory = _fill(memory_all, batch)
            seconds = timed_s(lambda: decoder(memory, self.args.new_tokens), self.device)
            return True, batch * self.args.new_tokens / seconds
        except Exception as err:  # noqa: BLE001
            if not out_of_memory(err):
                raise
            return False, None
        finally:
            decoder.release()
            del memory
            free(self.device)

    def max_batch(self, size: str, name: str, decoder, memory_all) -> dict:
        """Doubling from --max-start until a batch does not fit, then bisection to --max-resolution."""
        row = {"size": size, "decoder": name, "probes": []}
        self.data["max_batch"].append(row)
        low, high, batch = 0, None, self.args.max_start
        try:
            while high is None or high - low > max(1, int(low * self.args.max_resolution)):
                self.check_time()
                ok, tps = self.fits(decoder, memory_all, batch)
                row["probes"].append({"batch": batch, "fits": ok, "tokens_per_s": tps})
                self.log(f"{size} {name} max-batch probe {batch}: {'fits' if ok else 'out of memory'}"
                         + (f", {tps:,.0f} tokens/s" if tps else ""))
                if ok:
                    low, row["max_batch"], row["tokens_per_s_at_max"] = batch, batch, tps
                else:
                    high = batch
                batch = 2 * batch if high is None else (low + high) // 2
                self.save()
                if batch > self.args.max_limit:
                    row["note"] = f"stopped at --max-limit {self.args.max_limit}"
                    break
        except OutOfTime as err:
            row["note"] = f"{err}: at least {low}"
            raise
        finally:
            row["resolution"] = None if high is None else high - low
        return row

    # ---- the plan ----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        try:
            for size in args.sizes:
                model = random_whisper(size, self.device, dtype, seed=args.seed, init_std=args.init_std)
                memory_all = self.encoder_output(model, size)
                self.save()
                for name in args.decoders:  # main rows: most important decoder first, batches in the given order
                    self.check_time()
                    decoder = build_decoder(name, model, args.new_tokens)
                    for batch in args.batches:
                        self.check_time()
                        # each batch from scratch: transformers' static step compiled for this shape alone (not
                        # re-traced with a dynamic batch dimension), our graph captured for it
                        decoder.drop()
                        row = self.row(size, name, decoder, memory_all, batch)
                        self.data["rows"].append(row)
                        self.save()
                        self.log(_summary(row))
                    decoder.drop()
                    del decoder
                    free(self.device)
                for name in args.max_batch:
                    self.check_time()
                    decoder = build_decoder(name, model, args.new_tokens)
                    if isinstance(decoder, OursGreedy):  # only the measured model on the card while searching
                        model.to("cpu")
                    try:
                        self.max_batch(size, name, decoder, memory_all)
                    finally:
                        del decoder
                        free(self.device)
                        model.to(self.device)
                    self.save()
                del model, memory_all
                free(self.device)
        except OutOfTime as err:
            self.data["meta"]["stopped"] = str(err)
            self.log(f"stopped: {err}")
        self.save()
        write_report([self.data], self.out, with_plot=True)
        return self.data


def _fill(memory_all: torch.Tensor, batch: int) -> torch.Tensor:
    """`batch` rows of encoder output: the computed ones repeated (written in place: no transient copy)."""
    out = memory_all.new_empty(batch, *memory_all.shape[1:])
    n = memory_all.shape[0]
    for start in range(0, batch, n):
        out[start: start + n] = memory_all[: min(n, batch - start)]
    return out


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _summary(row: dict) -> str:
    head = f"{row['size']} {row['decoder']} batch {row['batch']}: "
    if "error" in row:
        return head + row["error"]
    return (head + f"{row['tokens_per_s']:,.0f} tokens/s ({row['limit_fraction']:.0%} of {row['limit_tokens_per_s']:,.0f}),"
            f" ttft {row['ttft_ms']:.1f} ms, {row['per_token_ms']:.2f} ms/token, cache {row['cache_mib']:,.1f} MiB"
            + (f", peak {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["large-v3"], choices=list(SIZES))
    p.add_argument("--decoders", nargs="*", default=DEFAULT_DECODERS, choices=list(DECODERS))
    p.add_argument("--batches", nargs="*", type=int, default=[64, 1, 16])
    p.add_argument("--max-batch", nargs="*", default=DEFAULT_MAX_BATCH, choices=list(DECODERS),
                   help="decoders whose largest batch is searched, after all main rows")
    p.add_argument("--max-start", type=int, default=128, help="first batch of the max-batch search")
    p.add_argument("--max-resolution", type=float, default=0.05, help="bisect until high - low <= this x low")
    p.add_argument("--max-limit", type=int, default=65536, help="stop doubling past this batch")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--memory-batch", type=int, default=64, help="utterances the encoder runs over (then repeated)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=420, help="seconds; no new row or probe starts after this")
    p.add_argument("--bandwidth", type=float, default=H200_BYTES_PER_S, help="bytes/s for the HBM-bound limit")
    p.add_argument("--init-std", type=float, default=0.02, help="random weights' std (tests: larger, varied tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit", default="", help="recorded in the JSON (the device copy may have no .git)")
    p.add_argument("--out", required=True, help="path without suffix: writes <out>.json, <out>.md, <out>.png")
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batches) or args.new_tokens < 1 or args.repeats < 1:
        p.error("--batches, --new-tokens and --repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    import sys

    args = parse_args(argv)
    args.command_line = " ".join(["python -m asr_attention.bench.generate", *(argv if argv is not None else sys.argv[1:])])
    return Bench(args).run()


if __name__ == "__main__":
    main()
