"""The measurements: whole-encoder forward (feature front end included), one attention site, the cache.

Forward times are eager (CUDA events around each call, median of at least `repeats` calls and at least
`min_seconds` of them): what a user of the model gets, Python launch overhead included. Batch-1 forwards are
launch-bound and jitter with the host, so they take many more samples than the few that a long forward needs,
and each variant is timed in alternation with the native model, which stays resident for the whole run.
Attention-site times are CUDA-graph replays (`bench_layers.time_ms`) when the
module can be captured, eager otherwise; the row says which.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from asr_attention.attention import cache_nbytes, relative_error
from asr_attention.attention.mha import MultiHeadAttention
from asr_attention.backbones import Backbone, count_parameters, original_variants, patch_attention, patched_variants
from asr_attention.bench.layers import time_ms as graph_time_ms

GIB = 2**30
SAMPLE_RATE = 16000


def autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if dtype == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"dtype={dtype!r} is not one of bf16, fp32")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(fns: list[Callable[[], object]], device: torch.device, warmup: int, repeats: int,
                   min_seconds: float = 0.0) -> list[float]:
    """Median ms of each fn, sampled in alternation (fn0, fn1, fn0, fn1, ...) until fn0 has at least `repeats`
    samples and `min_seconds` of them. Slow drift of the host or the GPU (clocks, other load) then touches every
    fn alike, so their ratio holds where timings taken one after the other drift apart."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    samples: list[list[float]] = [[] for _ in fns]
    while len(samples[0]) < repeats or sum(samples[0]) < 1000 * min_seconds:
        for fn, taken in zip(fns, samples):
            taken.append(_sample_ms(fn, device))
    return [statistics.median(taken) for taken in samples]


def _sample_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def eager_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
             min_seconds: float = 0.0) -> float:
    return interleaved_ms([fn], device, warmup, repeats, min_seconds)[0]


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, str]:
    """CUDA-graph replay time when fn can be captured, else eager; -> (ms, method)."""
    if device.type == "cuda":
        try:
            return graph_time_ms(fn, repeats=repeats, inner=10), "cuda graph"
        except Exception:  # not capturable (host syncs, data-dependent shapes)
            torch.cuda.synchronize(device)
    return eager_ms(fn, device, warmup, repeats), "eager"


def make_batch(batch: int, seconds: float, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    samples = int(round(seconds * SAMPLE_RATE))
    waves = 0.1 * torch.randn(batch, samples, generator=g)
    return waves.to(device), torch.full((batch,), samples, dtype=torch.long, device=device)


def weights_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def site_of(backbone: Backbone, layer: int | None) -> tuple[int, nn.Module]:
    sites = list(backbone.attention_sites())
    i = len(sites) // 2 if layer is None else int(layer)
    parent, name, _ = sites[i]
    return i, getattr(parent, name)


@torch.no_grad()
def capture_call(backbone: Backbone, site: nn.Module, waves: Tensor, lengths: Tensor) -> tuple[tuple, dict]:
    """The (args, kwargs) one attention site really receives in a forward pass."""
    seen: dict = {}

    def hook(mod, args, kwargs):
        seen["call"] = (args, dict(kwargs))

    handle = site.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        backbone(waves, lengths)
    finally:
        handle.remove()
    return seen["call"]


def out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


@torch.no_grad()
def forward_row(backbone: Backbone, device: torch.device, batch: int, seconds: float, dtype: str, cfg,
                attention_site: bool = True, reference: Backbone | None = None) -> dict:
    """One whole-encoder forward config: time, RTFx, peak memory, and (optionally) one attention site x layers.
    reference: the native model, timed in alternation with this one (`native_ms_paired`, what the ratio uses)."""
    row = {"batch": batch, "seconds": seconds, "dtype": dtype}
    waves, lengths = make_batch(batch, seconds, device, cfg.seed)
    try:
        with autocast(device, dtype):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                resident = torch.cuda.memory_allocated(device)  # this model's weights, and the reference's
                torch.cuda.reset_peak_memory_stats(device)
            log_probs, _ = backbone(waves, lengths)
            if device.type == "cuda":  # this model's weights + the forward's peak, whatever else is resident
                peak = torch.cuda.max_memory_allocated(device) - resident + weights_bytes(backbone)
                row["peak_gib"] = peak / GIB
            row["frames"] = int(log_probs.shape[1])
            del log_probs
            fns = [lambda: backbone(waves, lengths)]
            if reference is not None:
                fns.append(lambda: reference(waves, lengths))
            ms, *paired = interleaved_ms(fns, device, cfg.warmup, cfg.repeats, cfg.min_seconds)
            if paired:
                row["native_ms_paired"] = paired[0]
            row["ms"] = ms
            row["rtfx"] = batch * seconds / (ms / 1000)
            if attention_site:
                layer, site = site_of(backbone, cfg.attention_layer)
                args, kwargs = capture_call(backbone, site, waves, lengths)
                site_ms, method = timed(lambda: site(*args, **kwargs), device, cfg.warmup, cfg.repeats)
                layers = len(list(backbone.attention_sites()))
                row.update(attn_layer=layer, attn_layer_ms=site_ms, attn_ms=site_ms * layers, attn_method=method,
                           attn_share=site_ms * layers / ms)
                del args, kwargs
    except Exception as err:  # noqa: BLE001 - a row that cannot run is recorded, the others still run
        if not out_of_memory(err):
            raise
        row["error"] = "out of memory"
    finally:
        del waves, lengths
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


@torch.no_grad()
def cache_row(backbone: Backbone, native: bool, device: torch.device, seconds: float, cfg) -> dict:
    """Run the timed layer's attention with use_cache=True on its captured input (batch 1, fp32): measured bytes of
    the returned cache x layers vs the variant's analytic cache_bytes x layers. Native caches what MHA caches."""
    waves, lengths = make_batch(1, seconds, device, cfg.seed)
    layer, site = site_of(backbone, cfg.attention_layer)
    args, kwargs = capture_call(backbone, site, waves, lengths)
    inputs = backbone.variant_inputs(args, kwargs)
    if native:
        variant = original_variants(backbone)[layer]
    else:
        variant = patched_variants(backbone)[layer]
    _, cache = variant(**inputs, use_cache=True)
    x = inputs["x"]
    layers = len(list(backbone.attention_sites()))
    measured = cache_nbytes(cache) * layers
    analytic = variant.cache_bytes(x.shape[1], x.shape[0], x.dtype) * layers
    return {"frames": int(x.shape[1]), "batch": int(x.shape[0]), "dtype": str(x.dtype).replace("torch.", ""),
            "layers": layers, "measured_bytes": measured, "analytic_bytes": analytic,
            "measured_mib": measured / 2**20, "analytic_mib": analytic / 2**20, "tensors": sorted(cache)}


def build_variant(native_cpu: Backbone, attention: dict | None, device: torch.device) -> tuple[Backbone, dict]:
    """A copy of the native backbone on `device`, patched with `attention` (None = left native)."""
    model = copy.deepcopy(native_cpu).to(device).eval()
    summary = {"params": count_parameters(model)}
    if attention is not None:
        summary = patch_attention(model, attention)
        summary["params"] = summary["params_after"]
    return model, summary


@torch.no_grad()
def relpos_rows(backbone: Backbone, device: torch.device, batch: int, frames: int, dtypes: list[str], cfg) -> list[dict]:
    """The native relative-position attention module alone vs our MHA variant (the same weights, XL bias added
    through SDPA as an additive float mask), both called exactly as the layer calls them, on the same captured
    input of `batch` x `frames` encoder frames."""
    layer, site = site_of(backbone, cfg.attention_layer)
    ours = backbone.wrap(MultiHeadAttention(backbone.to_canonical(site)).to(device).eval())
    seconds = frames * backbone.frame_ms / 1000
    for _ in range(3):  # front ends trim or pad a frame or two: adjust the audio until exactly `frames` come out
        waves, lengths = make_batch(batch, seconds, device, cfg.seed)
        args, kwargs = capture_call(backbone, site, waves[:1], lengths[:1])
        got = (args[0] if args else kwargs["hidden_states"]).shape[1]
        if got == frames:
            break
        seconds += (frames - got) * backbone.frame_ms / 1000 + (0.25 * backbone.frame_ms / 1000 if got < frames else 0)
    rows = []
    for dtype in dtypes:
        with autocast(device, dtype):
            args, kwargs = capture_call(backbone, site, waves, lengths)
            x = args[0] if args else kwargs.get("hidden_states")
            native_ms, native_method = timed(lambda: site(*args, **kwargs), device, cfg.warmup, cfg.repeats)
            ours_ms, ours_method = timed(lambda: ours(*args, **kwargs), device, cfg.warmup, cfg.repeats)
            error = relative_error(site(*args, **kwargs)[0].float(), ours(*args, **kwargs)[0].float())
        rows.append({"module": type(site).__name__, "batch": batch, "frames": int(x.shape[1]), "dtype": dtype,
                     "native_ms": native_ms, "ours_ms": ours_ms, "speedup": native_ms / ours_ms, "error": error,
                     "method": native_method if native_method == ours_method else f"{native_method}/{ours_method}"})
        del args, kwargs
    return rows


@torch.no_grad()
def graphed_forward_row(backbone: Backbone, device: torch.device, batch: int, seconds: float, cfg) -> dict:
    """Moonshot: the whole forward captured in one CUDA graph (bf16 autocast), replay time."""
    row = {"batch": batch, "seconds": seconds, "dtype": "bf16"}
    waves, lengths = make_batch(batch, seconds, device, cfg.seed)
    try:
        with autocast(device, "bf16"):
            ms = graph_time_ms(lambda: backbone(waves, lengths), repeats=cfg.repeats, inner=3)
        row.update(ms=ms, rtfx=batch * seconds / (ms / 1000))
    except Exception as err:  # noqa: BLE001 - not capturable: say why
        torch.cuda.synchronize(device)
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    return row
