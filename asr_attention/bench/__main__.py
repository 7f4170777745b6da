"""python -m asr_attention.bench model=… attention=… (conf/bench.yaml); see asr_attention/bench/__init__.py."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from asr_attention.backbones import build_backbone
from asr_attention.config import resolvers  # noqa: F401  (registers ${pkg:...})
from asr_attention.reports.kv_cache import attention_presets
from asr_attention.runs.results import Results
from asr_attention.training.config_check import validate

from . import measure
from .report import add_ratios, markdown

log = logging.getLogger("asr_attention.bench")


def variant_configs(cfg: DictConfig) -> dict[str, dict | None]:
    """name -> attention config (None = native), native first; presets resolved against the model."""
    chosen = OmegaConf.to_container(cfg.attention, resolve=True)
    names = [chosen["name"]] if cfg.variants is None else list(cfg.variants)
    presets = attention_presets(cfg.model)
    presets[chosen["name"]] = chosen
    out: dict[str, dict | None] = {"native": None}
    for name in names:
        if name == "native":
            continue
        if name not in presets:
            raise ValueError(f"variants: {name!r} is not one of native, {', '.join(presets)}")
        out[name] = presets[name]
    return out


def configs(cfg: DictConfig) -> list[tuple[int, str]]:
    skip = set(cfg.skip or [])
    return [(b, d) for b in cfg.batches for d in cfg.dtypes if f"{d}x{b}" not in skip]


def run(cfg: DictConfig, out_dir: Path) -> dict:
    with open_dict(cfg):
        cfg.model.pretrained = False  # random weights at the configured sizes: no checkpoint needed
    validate(cfg)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no GPU is visible: pass device=cpu (tiny sizes)")
    torch.manual_seed(cfg.seed)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    native_cpu = build_backbone(cfg.model).eval()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = Results(out_dir / "results.json")
    results.update(
        meta={"card": card, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "commit": cfg.commit or "unknown", "device": str(device),
              "timing": "forward: eager, CUDA events, median of repeats, each variant in alternation with "
                        "native (RTFx x native from those pairs); attention site: CUDA-graph replay of one "
                        "layer's attention module on its captured call, x num_layers",
              "fp32": "torch defaults: matmul TF32 off, cuDNN conv TF32 on",
              "front_end": "included (wav2vec2: conv feature encoder; branchformer: Fbank + CNN)"},
        model=model_cfg, settings=OmegaConf.to_container(cfg, resolve=True),
        rows=[], long=[], cache={}, relpos=[], moonshot=[],
    )
    rows, long_rows, cache, relpos, moonshot = [], [], {}, [], []
    native, native_summary = measure.build_variant(native_cpu, None, device)  # resident: the paired reference
    for name, attention in variant_configs(cfg).items():
        log.info("%s: building on %s", name, device)
        if attention is None:
            model, summary, reference = native, native_summary, None
        else:
            (model, summary), reference = measure.build_variant(native_cpu, attention, device), native
        for batch, dtype in configs(cfg):
            row = {"variant": name, **measure.forward_row(model, device, batch, cfg.seconds, dtype, cfg,
                                                          reference=reference)}
            row["params"] = summary["params"]
            rows.append(row)
            log.info("%s", row)
        add_ratios(rows)
        results.update(rows=rows)
        cache[name] = measure.cache_row(model, attention is None, device, cfg.seconds, cfg)
        results.update(cache=cache)
        if cfg.long_seconds:
            quick = OmegaConf.merge(cfg, {"warmup": 1, "repeats": cfg.long_repeats})
            row = {"variant": name, **measure.forward_row(model, device, 1, cfg.long_seconds, "bf16", quick,
                                                          reference=reference)}
            long_rows.append(row)
            log.info("long: %s", row)
            add_ratios(long_rows)
            results.update(long=long_rows)
        if attention is None and cfg.relpos and any(
            measure.site_of(model, cfg.attention_layer)[1].__class__.__name__ == n
            for n in ("Wav2Vec2ConformerSelfAttention", "RelPosMHAXL")
        ):
            relpos = measure.relpos_rows(model, device, cfg.relpos_batch, cfg.relpos_frames, list(cfg.dtypes), cfg)
            results.update(relpos=relpos)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del native
    if cfg.moonshot and device.type == "cuda":  # last: a failed graph capture must not disturb the rows above
        mha = OmegaConf.to_container(cfg.attention, resolve=True) if cfg.attention.name == "mha" else \
            attention_presets(cfg.model)["mha"]
        for name, attention in (("native", None), ("mha", mha)):
            model, _ = measure.build_variant(native_cpu, attention, device)
            for batch in cfg.batches:
                row = {"variant": name, **measure.graphed_forward_row(model, device, batch, cfg.seconds, cfg)}
                eager = next((r for r in rows if r["variant"] == "native" and r["batch"] == batch
                              and r["dtype"] == "bf16" and "rtfx" in r), None)
                if eager and "rtfx" in row:
                    row["rtfx_x_native_eager"] = row["rtfx"] / eager["rtfx"]
                moonshot.append(row)
                log.info("moonshot: %s", row)
            results.update(moonshot=moonshot)
            del model
            torch.cuda.empty_cache()
    table = markdown(results.data)
    (out_dir / "results.md").write_text(table)
    print(table)
    return results.data


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
