"""Every number in the cache and speed tables of the README and docs/speed.md is a committed report's: the
baselines' KV-cache figures, the attention-layer and whole-encoder benchmarks' JSON, and the Whisper decoding runs'
reports (benchmarks/generate/, each run's file named in its README's run index). Tables are read as cells
(tests/markdown_tables.py), never sentences."""

from __future__ import annotations

import json
import re
from functools import cache

from markdown_tables import REPO, assert_shown, numbers, table

README, SPEED = REPO / "README.md", REPO / "docs/speed.md"
GENERATE = REPO / "benchmarks/generate"

HEADLINE = ("| decoder (ours: compiled step, CUDA graph) | cache x MHA | tokens/s x generate | "
            "ms/token at batch 1 x generate | report |")
KV_CACHE = "| attention (preset) | conformer MiB | branchformer MiB | vs MHA |"
LAYER = "| layer | B16·T1000 | B1·T16000 | 40-frame chunk on a 1000-frame cache (vs our MHA) |"
ENCODERS = ("| model (native RTFx at 16×20 s bf16) | attention | 16×20 bf16 | 16×20 fp32 | 1×20 bf16 | 1×20 fp32 | "
            "1×300 s bf16 (peak GiB × native) |")
RELPOS = "| native module | bf16: native → ours (error) | fp32: native → ours |"
LONG_FORM = "| model | native | patched MHA | linear attention |"
COMPILED = ("| decoder | batch | run | tokens/s | x baseline | of its HBM limit | ms/token | ms/token x baseline | "
            "cache MiB (self + cross) | cache x MHA |")
EARLIER = ("| decoder (batch 64) | tokens/s | x baseline | of its HBM limit | ms/token | cache MiB (self + cross) | "
           "cache x MHA |")
END_TO_END = ("| run | model | decoder | AN4 RTFx (x transformers) | speechocean762 RTFx (x transformers) | "
              "transcripts ≠ transformers' |")
CHECKED = {HEADLINE, KV_CACHE, LAYER, ENCODERS, RELPOS, LONG_FORM, COMPILED, EARLIER, END_TO_END}

RUN_INDEX = "| run | files | date | commit | what it measured |"
REPORT = ("| size | decoder | batch | tokens/s | x baseline | limit tokens/s | of limit | TTFT ms | ms/token | "
          "ms/token x baseline | peak GiB | peak x baseline | cache MiB (self + cross) | analytic MiB | "
          "measured = analytic | cache x MHA |")


@cache
def run_report(run: int) -> dict[tuple[str, int], dict[str, str]]:
    """Run N's report rows by (decoder, batch); the file is the run index's (benchmarks/generate/README.md)."""
    index = {int(r["run"]): re.findall(r"`([^`]+)`", r["files"])[0] for r in table(GENERATE / "README.md", RUN_INDEX)}
    rows = table(GENERATE / f"{index[run]}.md", REPORT)
    assert {r["size"] for r in rows} == {"large-v3"}
    return {(r["decoder"], int(r["batch"])): r for r in rows}


def value(cell: str) -> list[float]:
    return [float(n.replace(",", "")) for n in numbers(cell)]


def cache_x_mha(run: int, decoder: str, batch: int) -> float:
    """A decoder's caches over our MHA's in the same run and batch (the compiled MHA where it ran, else the graph)."""
    rows = run_report(run)
    mha = rows.get(("mha-compiled", batch)) or rows[("mha-graph", batch)]
    return value(rows[(decoder, batch)]["analytic MiB"])[0] / value(mha["analytic MiB"])[0]


def assert_per_run(cell: str, per_run: list[list[float]], what: str) -> None:
    """`cell` shows each run's values in turn ('5,427 / 6,219 / 5,620'), or once when every run has the same."""
    if len(numbers(cell)) == len(per_run[0]):
        for values in per_run:
            assert_shown(values, cell, what)
    else:
        assert_shown([v for values in per_run for v in values], cell, what)


def test_readme_decoding_table_is_the_committed_runs():
    decoders = {"mha": "mha-compiled", "gqa, 2 KV heads": "gqa-compiled", "mla r = d/4": "mla-compiled"}
    rows = table(README, HEADLINE)
    assert [r["decoder (ours: compiled step, CUDA graph)"] for r in rows] == list(decoders)
    for row in rows:
        decoder = decoders[row["decoder (ours: compiled step, CUDA graph)"]]
        runs = [int(n) for n in numbers(re.fullmatch(r"\[runs? ([\d /]+)\]\(benchmarks/generate/README\.md\)",
                                                     row["report"]).group(1))]
        assert_per_run(row["tokens/s x generate"], [value(run_report(r)[(decoder, 64)]["x baseline"]) for r in runs],
                       decoder)
        at_batch_1 = [r for r in runs if (decoder, 1) in run_report(r)]
        assert at_batch_1, decoder
        assert_per_run(row["ms/token at batch 1 x generate"],
                       [value(run_report(r)[(decoder, 1)]["ms/token x baseline"]) for r in at_batch_1], decoder)
        assert_per_run(row["cache x MHA"], [[cache_x_mha(r, decoder, 64)] for r in runs], decoder)
        assert_shown([implied_cache_x_mha(row["decoder (ours: compiled step, CUDA graph)"])], row["cache x MHA"], decoder)


def implied_cache_x_mha(variant: str) -> float:
    """What the variant's setting makes of MHA's cache at large-v3 sizes: GQA keeps g of the heads' K/V, MLA a
    latent of d/N for K and V's 2·d."""
    from asr_attention.generation.whisper_sizes import SIZES

    heads = SIZES["large-v3"][1]
    if variant == "mha":
        return 1.0
    if kv_heads := re.fullmatch(r"gqa, (\d+) KV heads", variant):
        return int(kv_heads.group(1)) / heads
    return 1 / (2 * int(re.fullmatch(r"mla r = d/(\d+)", variant).group(1)))


def test_compiled_decoding_table_is_the_committed_runs():
    columns = {"tokens/s": "tokens/s", "x baseline": "x baseline", "of its HBM limit": "of limit",
               "ms/token": "ms/token", "ms/token x baseline": "ms/token x baseline",
               "cache MiB (self + cross)": "cache MiB (self + cross)"}
    rows = table(SPEED, COMPILED)
    assert len(rows) == 9
    for row in rows:
        decoder, batch = row["decoder"].split()[0], int(row["batch"])
        runs = [int(n) for n in numbers(row["run"])]
        for column, source in columns.items():
            assert_per_run(row[column], [value(run_report(r)[(decoder, batch)][source]) for r in runs],
                           f"{decoder} {column}")
        assert_per_run(row["cache x MHA"], [[cache_x_mha(r, decoder, batch)] for r in runs], decoder)


def test_earlier_decoding_table_is_the_committed_runs():
    """Run 2's rows at batch 64; a row marked '(run 1)' is run 1's."""
    rows = table(SPEED, EARLIER)
    assert len(rows) == 6
    for row in rows:
        decoder = row["decoder (batch 64)"].split()[0]
        run = 1 if "(run 1)" in row["decoder (batch 64)"] else 2
        source = run_report(run)[(decoder, 64)]
        for column in ("tokens/s", "x baseline", "ms/token", "cache MiB (self + cross)"):
            assert_shown(value(source[column]), row[column], f"{decoder} {column}")
        assert_shown(value(source["of limit"]), row["of its HBM limit"], decoder)
        assert_shown([cache_x_mha(run, decoder, 64)], row["cache x MHA"], decoder)


def test_kv_cache_table_is_the_baselines():
    baselines = {m: json.loads((REPO / f"baselines/{m}_baseline.json").read_text())["kv_cache_mb"]
                 for m in ("conformer", "branchformer")}
    presets = {"MHA": ("mha", ""), "MLA, latent_dim = d_model": ("mla", "latent_dim=d_model"),
               "GQA, 2 KV heads": ("gqa", "num_kv_heads=2"), "linear (elu), state + normaliser": ("linear", "elu")}
    rows = table(SPEED, KV_CACHE)
    assert [r["attention (preset)"] for r in rows] == list(presets)
    d_model = {m: json.loads((REPO / f"baselines/{m}_baseline.json").read_text())["d_model"] for m in baselines}
    for row in rows:
        variant, preset = presets[row["attention (preset)"]]
        for model, kv in baselines.items():
            assert (kv["frames"], kv["batch"], kv["dtype"]) == (1000, 1, "float32")
            assert preset.replace("d_model", str(d_model[model])) in kv["presets"][variant]
            assert_shown([kv[variant]], row[f"{model} MiB"], f"{model} {variant}")
        ratios = [kv[variant] / kv["mha"] for kv in baselines.values()]
        if variant == "linear":
            assert row["vs MHA"] == "constant in frames" and all("constant in frames" in kv["linear_is"]
                                                                 for kv in baselines.values())
        else:
            assert_shown(list(dict.fromkeys(ratios)), row["vs MHA"], variant)


def test_attention_layer_table_is_the_committed_benchmark():
    rows_json = json.loads((REPO / "benchmarks/attention_layers.json").read_text())["rows"]
    measured = {(r["layer"], r["shape"]): r["x_baseline"] for r in rows_json}
    layers = {"our MHA (Q/K/V in one GEMM)": "mha", "GQA, 2 KV heads": "gqa (2 kv heads)", "MLA, r = d": "mla r=d",
              "MLA, r = d/4": "mla r=d/4", "linear (elu+1), Triton kernel": "linear elu+1"}
    shapes = {"B16·T1000": "B16 T1000", "B1·T16000": "B1 T16000",
              "40-frame chunk on a 1000-frame cache (vs our MHA)": "B16 chunk40 cache1000"}
    rows = table(SPEED, LAYER)
    assert [r["layer"] for r in rows] == list(layers)
    for row in rows:
        for column, shape in shapes.items():
            x = measured[(layers[row["layer"]], shape)]
            assert_shown([x, 1 / x] if "faster" in row[column] else [x], row[column], f"{row['layer']} {shape}")


@cache
def encoder_runs() -> dict[str, dict]:
    return {r["model"]["name"]: r for r in json.loads((REPO / "benchmarks/gpu_H200.json").read_text())["runs"]}


def test_whole_encoder_table_is_the_committed_benchmark():
    models = {"wav2vec2-large-960h sizes": "conformer", "wav2vec2-conformer rel-pos sizes": "conformer_relpos",
              "SpeechBrain Branchformer-large sizes": "branchformer"}
    rows = table(SPEED, ENCODERS)
    assert len(rows) == 12
    for row in rows:
        name, params, rtfx = re.fullmatch(r"(.+), ([\d.]+) M \((\d+)\)", row["model (native RTFx at 16×20 s bf16)"]
                                          ).groups()
        run = encoder_runs()[models[name]]
        by = {(r["variant"], r["batch"], r["seconds"], r["dtype"]): r for r in run["rows"] + run["long"]}
        native = by[("native", 16, 20, "bf16")]
        assert_shown([native["params"] / 1e6, native["rtfx"]], f"{params} {rtfx}", name)
        for column in ("16×20 bf16", "16×20 fp32", "1×20 bf16", "1×20 fp32"):
            batch, seconds, dtype = re.fullmatch(r"(\d+)×(\d+) (\w+)", column).groups()
            assert_shown([by[(row["attention"], int(batch), int(seconds), dtype)]["rtfx_x"]], row[column],
                         f"{name} {row['attention']} {column}")
        long = by[(row["attention"], 1, 300, "bf16")]
        assert_shown([long["rtfx_x"], long["peak_x"]], row["1×300 s bf16 (peak GiB × native)"], name)


def test_relative_position_table_is_the_committed_benchmark():
    modules = {"SpeechBrain RelPosMHAXL (d 512, 8 heads)": ("branchformer", "RelPosMHAXL"),
               "HF Wav2Vec2ConformerSelfAttention, relative (d 1024, 16 heads)":
                   ("conformer_relpos", "Wav2Vec2ConformerSelfAttention")}
    rows = table(SPEED, RELPOS)
    assert [r["native module"] for r in rows] == list(modules)
    for row in rows:
        name, module = modules[row["native module"]]
        run = encoder_runs()[name]
        assert_shown([run["model"]["d_model"], run["model"]["num_heads"]], row["native module"].split("(")[1], name)
        by = {r["dtype"]: r for r in run["relpos"] if r["module"] == module and (r["batch"], r["frames"]) == (16, 1000)}
        bf16, fp32 = by["bf16"], by["fp32"]
        assert_shown([bf16["native_ms"], bf16["ours_ms"], bf16["speedup"], bf16["error"]],
                     row["bf16: native → ours (error)"], module)
        assert_shown([fp32["native_ms"], fp32["ours_ms"], fp32["speedup"]], row["fp32: native → ours"], module)


def test_long_form_table_is_the_committed_benchmark():
    models = {"Branchformer": "branchformer", "rel-pos conformer": "conformer_relpos", "wav2vec2-large": "conformer"}
    rows = table(SPEED, LONG_FORM)
    assert len(rows) == 3
    for row in rows:
        label, _, frames = row["model"].partition(", ")
        run = encoder_runs()[models[label]]
        long = {r["variant"]: r for r in run["long"]}
        assert {r["seconds"] for r in run["long"]} == {300}
        if frames:  # the nominal frame count of 5 minutes at the model's frame rate
            assert_shown([300 * 1000 / run["model"]["frame_ms"]], frames, label)
        assert_shown([long["native"]["peak_gib"]], row["native"], label)
        for column, variant in (("patched MHA", "mha"), ("linear attention", "linear")):
            assert_shown([long[variant]["peak_gib"], long[variant]["rtfx_x"]], row[column], f"{label} {variant}")


def test_end_to_end_table_is_the_committed_benchmark():
    """The README's end-to-end rows (batch 64), per run (benchmarks/end_to_end/H100_<run>.json): transformers' faster
    path per model and set, ours (MHA) with its ratio to it and the transcripts that differ from transformers'."""
    models = {"Whisper tiny.en": "whisper", "Whisper base": "whisper_base"}
    sets = {"AN4 RTFx (x transformers)": "an4", "speechocean762 RTFx (x transformers)": "speechocean762"}
    rows = table(README, END_TO_END)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    assert len(runs) >= 2, "every committed end-to-end run on the H100 has its rows"
    for name in runs:
        run = json.loads((REPO / f"benchmarks/end_to_end/H100_{name}.json").read_text())
        assert run["meta"]["card"] == "NVIDIA H100 80GB HBM3"
        rows64 = [r for r in run["rows"] if r["batch"] == 64 and "rtfx" in r]
        mine = [r for r in rows if r["run"] == name]
        measured = [m for m in models if any(r["model"] == models[m] and r["decoder"] == "mha" for r in rows64)]
        assert [(r["model"], r["decoder"]) for r in mine] == [(m, d) for m in measured
                                                              for d in ("transformers (faster path)", "ours, mha")]
        for row in mine:
            model = models[row["model"]]
            differ = []
            for column, set_name in sets.items():
                hf = max(r["rtfx"] for r in rows64 if (r["model"], r["set"]) == (model, set_name)
                         and r["decoder"].startswith("hf-"))
                if row["decoder"] == "transformers (faster path)":
                    assert_shown([hf], row[column], f"{name} {model} {set_name}")
                    continue
                ours = next(r for r in rows64 if (r["model"], r["set"], r["decoder"]) == (model, set_name, "mha"))
                assert_shown([ours["rtfx"], ours["rtfx"] / hf], row[column], f"{name} {model} {set_name}")
                differ.append(ours["differ_from_hf"])
            cell = row["transcripts ≠ transformers'"]
            assert cell == ("" if row["decoder"] == "transformers (faster path)" else " / ".join(map(str, differ)))


def test_end_to_end_base_table_is_the_committed_run():
    """benchmarks/end_to_end/README.md's base table (b301af1): RTFx and its ratio to transformers' faster path at
    batch 64, tokens/s and its ratio at batch 1, and the MHA transcripts that differ, from the run's JSON."""
    run = json.loads((REPO / "benchmarks/end_to_end/H100_b301af1_whisper_base.json").read_text())
    rows = table(REPO / "benchmarks/end_to_end/README.md", "| Whisper base | AN4 batch 64: RTFx (x hf) | "
                 "speechocean762 batch 64 | AN4 batch 1: tokens/s (x hf) | transcripts ≠ hf |")
    decoders = {"ours, MHA": "mha",
                "ours, trained cross-memory run (seed 0)": "run:whisper-base-retain_kl-decoder-mla_d2_act_memory-seed0"}
    cells = [("AN4 batch 64: RTFx (x hf)", "an4", 64, "rtfx"), ("speechocean762 batch 64", "speechocean762", 64, "rtfx"),
             ("AN4 batch 1: tokens/s (x hf)", "an4", 1, "tokens_per_s")]
    assert [r["Whisper base"] for r in rows] == ["transformers, faster path", *decoders]
    for row in rows:
        for column, set_name, batch, key in cells:
            at = [r for r in run["rows"] if (r["set"], r["batch"]) == (set_name, batch)]
            hf = max((r for r in at if r["decoder"].startswith("hf-")), key=lambda r: r["rtfx"])
            if row["Whisper base"] == "transformers, faster path":
                assert_shown([hf[key]], row[column], column)
                assert f"({hf['decoder'][3:]})" in row[column], column
                continue
            ours = next(r for r in at if r["decoder"] == decoders[row["Whisper base"]])
            assert_shown([ours[key], ours[key] / hf[key]], row[column], f"{row['Whisper base']} {column}")
    mha = [r["differ_from_hf"] for r in run["rows"] if r["decoder"] == "mha"]
    assert rows[1]["transcripts ≠ hf"] == " / ".join(map(str, mha))


def test_end_to_end_stop_check_table_is_the_committed_runs():
    """benchmarks/end_to_end/README.md's tiny.en MHA table: a5a1f62 (before the lagged stop check and compaction)
    against eabd522 (with them), each row from its run's JSON: RTFx and its ratio at batch 64, tokens/s and
    transformers' static tokens/s at batch 1, the transcripts that differ."""
    rows = table(REPO / "benchmarks/end_to_end/README.md", "| tiny.en MHA | AN4 batch 64: RTFx (x hf) | "
                 "speechocean762 batch 64 | AN4 batch 1: tokens/s (hf static) | speechocean762 batch 1 | "
                 "transcripts ≠ hf |")
    files = {"a5a1f62": "H100_a5a1f62.json", "eabd522": "H100_eabd522_whisper.json"}
    assert [r["tiny.en MHA"].split()[0] for r in rows] == list(files)
    for row, name in zip(rows, files.values()):
        runs = [r for r in json.loads((REPO / "benchmarks/end_to_end" / name).read_text())["rows"]
                if r["model"] == "whisper" and "rtfx" in r]
        at = lambda set_name, batch, decoder: next(  # noqa: E731
            r for r in runs if (r["set"], r["batch"], r["decoder"]) == (set_name, batch, decoder))
        for column, set_name in (("AN4 batch 64: RTFx (x hf)", "an4"), ("speechocean762 batch 64", "speechocean762")):
            hf = max(r["rtfx"] for r in runs if (r["set"], r["batch"]) == (set_name, 64) and r["decoder"][:3] == "hf-")
            assert_shown([at(set_name, 64, "mha")["rtfx"], at(set_name, 64, "mha")["rtfx"] / hf], row[column], column)
        batch1 = (("AN4 batch 1: tokens/s (hf static)", "an4"), ("speechocean762 batch 1", "speechocean762"))
        for column, set_name in batch1:
            assert_shown([at(set_name, 1, "mha")["tokens_per_s"], at(set_name, 1, "hf-static")["tokens_per_s"]],
                         row[column], column)
        differ = [at(s, b, "mha")["differ_from_hf"] for s in ("an4", "speechocean762") for b in (64, 1)]
        assert sorted(map(int, row["transcripts ≠ hf"].split(" / "))) == sorted(differ)
