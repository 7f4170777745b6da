"""Zero-shot WER of a Whisper model (tiny.en: model=whisper; base: whisper_base) on AN4 test or the out-of-domain
set (speechocean762), unconverted and under each attention variant on each kind of site, no fine-tuning:

    python -m asr_attention.reports.zero_shot                       # the whole table -> benchmarks/whisper_zero_shot.*
    python -m asr_attention.reports.zero_shot --sites encoder --variants mha,linear --limit 20
    python -m asr_attention.reports.zero_shot --model whisper_base --set speechocean762 \
        --out benchmarks/zero_shot/whisper_base_speechocean762.json

AN4 is scored with the project's normaliser, speechocean762 with Whisper's English one (data/normalisers.py).

Each row converts a fresh copy of the loaded model (the same `convert` as a training run: calibration and
fidelity on conf/train.yaml's calibration.frames of AN4 val utterances drawn across the split), then decodes the
test set with the cached greedy decoder and its fallback.
An encoder that is not converted runs once for all rows. Rows are appended to the JSON as they finish, each with
what it was measured with (--limit, --batch-size, the --device type). A re-run reuses a stored row only when
those are the ones asked for, and says so on its line (so a long table survives interruption); a file holding
rows measured otherwise is refused, naming both, rather than mixed with new rows or reprinted as if measured:
--fresh measures every row anew (replacing the file), --out writes elsewhere. WER is scored from the stored
transcripts, with the text normaliser (both sides) and raw.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchmetrics.functional.text import word_error_rate

from ..backbones.whisper.load import build_whisper
from ..backbones.whisper.tokens import WhisperTextTokenizer
from ..data.corpora import OOD_SETS
from ..data.datamodule import build_datamodule
from ..data.normalisers import scoring_normaliser
from ..generation.decoding import transcribe
from ..generation.token_limit import with_token_limit
from ..training.experiment import convert, decoding_options

CONF = Path(__file__).resolve().parents[2] / "conf"
SITES = {"encoder": ["encoder"], "decoder_self": ["decoder_self"], "cross": ["cross"],
         "decoder_self+cross": ["decoder_self", "cross"]}


def variants(d: int, heads: int = 6) -> dict[str, dict]:
    """The table's rows: mha; gqa with 1-4 KV heads (those dividing the heads); mla at d, d/2, d/4, plain and
    activation-aware, and at d/2 with cross-attention over the encoder output ("cross-memory": exact at cross
    sites, one cache for all of them; rows with a cross site only); linear."""
    out = {"mha": {"name": "mha"}}
    out.update({f"gqa g={g}": {"name": "gqa", "num_kv_heads": g} for g in (1, 2, 3, 4) if heads % g == 0 and g < heads})
    for r, label in ((d, "d"), (d // 2, "d/2"), (d // 4, "d/4")):
        for calibration in ("plain", "activation"):
            out[f"mla r={label} {calibration}"] = {"name": "mla", "latent_dim": r, "calibration": calibration}
    out["mla r=d/2 activation cross-memory"] = {"name": "mla", "latent_dim": d // 2, "calibration": "activation",
                                                  "cross_latent": "memory"}
    out["linear"] = {"name": "linear", "feature_map": "elu"}
    return out


def wer(rows: list[dict], normalised: bool, normaliser: str = "an4") -> float:
    """Normalised: references uncased, Whisper's hypotheses cased (see data/normalisers.py)."""
    if not normalised:
        return float(word_error_rate([r["hyp"] for r in rows], [r["ref"] for r in rows]))
    norm = scoring_normaliser(normaliser)
    return float(word_error_rate([norm(r["hyp"], cased=True) for r in rows], [norm(r["ref"]) for r in rows]))


def model_config(name: str):
    """conf/model/<name>.yaml as a training run composes it (whisper_base inherits whisper)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"model={name}"]).model


def test_data(test_set: str, tokenizer, batch_size: int, limit: int | None):
    """AN4 test, or an out-of-domain set's one split."""
    data = dict(corpus=test_set, batch_size=batch_size, num_workers=0, limit_test=limit)
    if test_set != "an4":
        data.update(root=None, test_split="test")
    return build_datamodule(data, tokenizer)


class ZeroShot:
    def __init__(self, limit: int | None, batch_size: int, device: str, model: str = "whisper",
                 test_set: str = "an4"):
        self.model_cfg = model_config(model)
        self.pristine = build_whisper(self.model_cfg).eval().to(device)
        self.tokenizer = WhisperTextTokenizer(self.pristine.tokens)
        self.data = test_data(test_set, self.tokenizer, batch_size, limit)
        self.data.setup("test")
        # calibration and fidelity: as a training run's (conf/train.yaml calibration.frames, drawn across AN4 val)
        self.calibration = build_datamodule(dict(corpus="an4", batch_size=8, num_workers=0), self.tokenizer)
        self.calibration.setup()
        self.calibration_frames = OmegaConf.load(CONF / "train.yaml").calibration.frames
        self.batches = [move_data_to_device(b, device) for b in self.data.test_dataloader() if b is not None]
        self.options = with_token_limit(self.pristine, decoding_options(self.model_cfg))
        self._memories = None

    @torch.no_grad()
    def run(self, attention: dict | None, sites: list[str]) -> dict:
        start = time.time()
        backbone = copy.deepcopy(self.pristine)
        conversion = None
        if attention is not None:
            conversion = convert(backbone, OmegaConf.create({**attention, "sites": sites}), self.calibration,
                                 self.calibration_frames)
            backbone.eval()
        encoder_converted = attention is not None and "encoder" in sites
        if not encoder_converted and self._memories is None:
            self._memories = [backbone.encode(b["waves"], b["wave_lengths"]) for b in self.batches]
        memories = self._memories if not encoder_converted else None
        predictions = []
        for i, batch in enumerate(self.batches):
            memory = memories[i] if memories is not None else backbone.encode(batch["waves"], batch["wave_lengths"])
            for utt, ref, h in zip(batch["utt_ids"], batch["texts"], transcribe(backbone, memory, self.options)):
                predictions.append({"utt_id": utt, "ref": ref, "hyp": backbone.tokens.decode(h.tokens),
                                    "temperature": h.temperature, "truncated": h.truncated})
        return {"attention": attention, "sites": sites, "predictions": predictions, "seconds": time.time() - start,
                "fidelity": None if conversion is None else conversion["fidelity"],
                "measured_cache_bytes": None if conversion is None else conversion["measured_cache_bytes"],
                "latent_dims": None if conversion is None else conversion.get("latent_dims")}


def normaliser_of(row: dict) -> str:
    """The scoring normaliser of a row's test set (rows from before --set existed are AN4's)."""
    return (row.get("measured_with") or {}).get("normaliser", "an4")


def table(results: dict) -> str:
    """Markdown: normalised WER % per variant (rows) and kind of site (columns), raw WER of the unconverted row."""
    base = results.get("unconverted")
    lines = []
    if base:
        measured = base.get("measured_with") or {}
        lines.append(f"unconverted {measured.get('model', 'whisper')} on {measured.get('set', 'an4')}: WER "
                     f"{100 * wer(base['predictions'], True, normaliser_of(base)):.1f} % normalised "
                     f"({normaliser_of(base)}), {100 * wer(base['predictions'], False):.1f} % raw "
                     f"({len(base['predictions'])} utterances)\n")
    names = list(dict.fromkeys(k.split(" @ ")[0] for k in results if k != "unconverted"))
    lines.append("| variant | " + " | ".join(SITES) + " |")
    lines.append("|---|" + "---:|" * len(SITES))
    for name in names:
        cells = []
        for site in SITES:
            row = results.get(f"{name} @ {site}")
            cells.append("—" if row is None else f"{100 * wer(row['predictions'], True, normaliser_of(row)):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measured_with(args: argparse.Namespace) -> dict:
    """What a row's numbers depend on besides the code: which model and utterances, how they are batched, on what
    and how scored. (Rows of the first table, tiny.en on AN4, recorded no model, set or normaliser: the defaults.)"""
    wanted = {"limit": args.limit, "batch_size": args.batch_size, "device": torch.device(args.device).type}
    if (args.model, args.set) != ("whisper", "an4"):
        wanted.update(model=args.model, set=args.set, normaliser=OOD_SETS.get(args.set, "an4"))
    return wanted


def stored_rows(out: Path, wanted: dict, fresh: bool) -> dict:
    """The rows of `out` that this command may reuse: all of them when they were measured with `wanted`, none
    with --fresh. Rows measured otherwise (or with nothing recorded) stop the command, naming both."""
    results = json.loads(out.read_text()) if out.exists() and not fresh else {}
    other = {json.dumps(row.get("measured_with")) for row in results.values() if row.get("measured_with") != wanted}
    if other:
        raise SystemExit(f"{out} holds rows measured with {', '.join(sorted(other))}, not {json.dumps(wanted)}: "
                         f"new rows would be mixed with them, and theirs are not what was asked for. Write elsewhere "
                         f"(--out NEW.json), or measure every row anew with --fresh (replaces {out}).")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/whisper_zero_shot.json")
    parser.add_argument("--model", default="whisper", help="conf/model name: whisper (tiny.en) or whisper_base")
    parser.add_argument("--set", default="an4", choices=["an4", *OOD_SETS], help="the test set")
    parser.add_argument("--sites", default=",".join(SITES), help=f"comma-separated, of {list(SITES)}")
    parser.add_argument("--variants", default=None, help="comma-separated names (default: all); see variants()")
    parser.add_argument("--limit", type=int, default=None, help="first N test utterances")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fresh", action="store_true",
                        help="measure every row anew, replacing --out (default: reuse its rows measured with the "
                             "same --limit, --batch-size and device type)")
    args = parser.parse_args(argv)
    out, wanted = Path(args.out), measured_with(args)
    results = stored_rows(out, wanted, args.fresh)
    model_cfg = model_config(args.model)
    chosen = variants(model_cfg.d_model, model_cfg.num_heads)
    if args.variants:
        unknown = [v for v in args.variants.split(",") if v not in chosen]
        if unknown:
            raise SystemExit(f"--variants: {unknown} not among {list(chosen)}")
        chosen = {k: chosen[k] for k in args.variants.split(",")}
    bad = [s for s in args.sites.split(",") if s not in SITES]
    if bad:
        raise SystemExit(f"--sites: {bad} not among {list(SITES)}")
    jobs = [("unconverted", None, [])] + [(f"{name} @ {site}", att, SITES[site])
                                          for site in args.sites.split(",") for name, att in chosen.items()
                                          if att.get("cross_latent") is None or "cross" in SITES[site]]
    zs = None  # the model loads only if a row is to be measured
    for key, attention, sites in jobs:
        if key in results:
            print(f"{key}: WER {100 * wer(results[key]['predictions'], True, normaliser_of(results[key])):.1f} % (reused: stored in {out}, "
                  f"measured with {json.dumps(wanted)}; --fresh measures it again)", flush=True)
            continue
        zs = zs or ZeroShot(args.limit, args.batch_size, args.device, args.model, args.set)
        results[key] = {**zs.run(attention, sites), "measured_with": wanted}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"{key}: WER {100 * wer(results[key]['predictions'], True, normaliser_of(results[key])):.1f} % "
              f"({results[key]['seconds']:.0f} s)", flush=True)
    out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
