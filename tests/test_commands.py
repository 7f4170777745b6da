"""What a user runs on a trained run: evaluate (any test data), transcribe (files, manifests), export_dir= (a
converted model that loads back without its run folder). On a Whisper demo run trained here: tiny.en, decoder
self- and cross-attention converted to MLA at d/4, calibrated on the unconverted model's own transcripts, one
label-free fine-tuning step on 8 AN4 utterances (KL to the unconverted model on its transcripts), on the CPU."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from asr_attention import evaluate, transcribe
from asr_attention.backbones import patch_attention, patched_variants
from asr_attention.training.converted_model import load_converted, save_converted
from asr_attention.data.corpora import read_corpus
from asr_attention.data.normalisers import scoring_normaliser
from asr_attention.data.manifest import Utterance, write_manifest
from asr_attention.data.text import CharTokenizer
from asr_attention.training.experiment import build_tokenizer_and_backbone
from asr_attention.reports.zero_shot import wer
from asr_attention.runs.results import summary_table

REPO = Path(__file__).resolve().parents[1]
# warmup 0: the one step changes the weights (at a small lr: the model stays as good as converted). Greedy alone:
# the fallback's sampling draws for an utterance depend on which others share its batch (transcribe's batches are
# not the test step's), greedy's tokens do not. calibration.text=teacher and the label-free recipe (issue 31) ride
# along: evaluate --before and transcribe's fresh conversion must then convert as the run did. A model calibrated on
# 2 utterances is fragile: greedy text that loops would run to the model's 446 tokens, so 24 (AN4's longest
# reference is 16) bounds each decode.
MODEL = ["experiment=whisper_demo", "model.decoding.temperatures=[0.0]", "model.decoding.max_tokens=24",
         "data.limit_val=2", "calibration.text=teacher"]
RUN = [*MODEL, "data.limit_train=8", "data.limit_test=2", "data.limit_ood=2", "optim.warmup_steps=0", "optim.lr=1e-5",
       "optim.kl_weight=1", "optim.ce_weight=0", "optim.distill_text=teacher", "trainer.log_every_n_steps=1"]


def train(*overrides: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "asr_attention.train", *RUN, *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def wav(path: Path, samples: np.ndarray, rate: int = 16000) -> str:
    sf.write(path, samples, rate)
    return str(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The run folder; its training command also exported the model to <root>/in_run."""
    root = tmp_path_factory.mktemp("whisper_run")
    train(f"hydra.run.dir={root / 'run'}", f"export_dir={root / 'in_run'}",  # + each step's terms in a CSV file
          "+logger.csv._target_=lightning.pytorch.loggers.CSVLogger", f"+logger.csv.save_dir={root / 'run'}")
    return root / "run"


@pytest.fixture(scope="module")
def evaluated(run) -> dict:
    """evaluate on the run's own test data, also unconverted and before fine-tuning; results.json's digest before
    and after."""
    before = digest(run / "results.json")
    out = evaluate.evaluate(run, [], unconverted=True, before=True)
    return {"report": json.loads(out.read_text()), "path": out, "digests": (before, digest(run / "results.json"))}


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_evaluate_measures_what_the_runs_own_test_measured(run, evaluated):
    report, stored = evaluated["report"], results(run)
    assert evaluated["path"] == run / "eval" / "an4-test-first2.json"
    for phase in ("unconverted", "before", "after"):  # loss, WER, CER, raw WER and CER, exactly
        assert report[phase] == stored[phase], phase
    assert report["predictions"] == stored["predictions"] and report["utterances"] == 2
    assert report["after"]["test_loss"] != report["before"]["test_loss"]  # the checkpoint's fine-tuned weights
    assert report["checkpoint"] == stored["best_checkpoint"]
    assert evaluated["digests"][0] == evaluated["digests"][1]  # results.json untouched


def test_the_run_tested_out_of_domain_with_whispers_english_normaliser(run):
    """model.ood_test=speechocean762 (Whisper's default) beside each AN4 test: unconverted, before, after."""
    stored = results(run)
    ood = stored["ood"]
    assert stored["scoring"] == {"test": "an4", "ood": "english"}
    assert (ood["set"], ood["normaliser"], ood["utterances"]) == ("speechocean762", "english", 2)
    assert ood["skipped_files"] == []
    metrics = {"test_wer", "test_cer", "test_raw_wer", "test_raw_cer", "test_loss"}
    assert all(set(ood[phase]) == metrics for phase in ("unconverted", "before", "after"))
    first = [u.utt_id for u in read_corpus("speechocean762", None, "test")[:2]]  # data.limit_ood=2
    assert sorted(p["utt_id"] for p in ood["predictions"]) == sorted(first)
    # the after phase's WER is the english-normalised one of its predictions (the raw one counts case and marks)
    english = scoring_normaliser("english")
    refs, hyps = ([english(p[side]) for p in ood["predictions"]] for side in ("ref", "hyp"))
    assert ood["after"]["test_wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert ood["after"]["test_raw_wer"] > ood["after"]["test_wer"]
    table = summary_table(stored)
    assert "out-of-domain test" in table and "speechocean762: 2 utterances, english normaliser" in table
    row = next(line for line in table.splitlines() if line.startswith("OOD WER before -> after fine-tuning"))
    assert row.endswith(f"  {100 * ood['before']['test_wer']:.1f} % -> {100 * ood['after']['test_wer']:.1f} %")


def test_evaluate_ood_measures_what_the_run_measured_out_of_domain(run, capsys):
    evaluate.main([str(run), "--ood"])
    assert "(2 utterances, english normaliser)" in capsys.readouterr().out
    report = json.loads((run / "eval" / "speechocean762-test-first2-english.json").read_text())
    assert (report["set"], report["scoring"], report["utterances"]) == ("speechocean762", "english", 2)
    assert report["after"] == results(run)["ood"]["after"]
    assert report["predictions"] == results(run)["ood"]["predictions"]


def test_the_run_calibrated_and_trained_on_the_teachers_text(run):
    """Conversion teacher-forced the decoder on tiny.en's own transcripts of the 2 val utterances (Whisper's
    spelling: a token count of its own), and the step's loss was the KL alone (ce_weight 0), each term logged."""
    import csv

    used = results(run)["conversion"]["calibration_data"]
    assert used["text"] == "teacher" and used["split"] == "val" and used["utterances"] == 2 and used["tokens"] > 4
    (metrics,) = run.glob("lightning_logs/version_*/metrics.csv")
    (step,) = [r for r in csv.DictReader(metrics.open()) if r["train_loss"]]
    assert float(step["train_kl"]) > 1e-4 and float(step["train_ce"]) > 0
    assert float(step["train_loss"]) == pytest.approx(float(step["train_kl"]))


def an4_test(ids: list[str]) -> list:
    by_id = {u.utt_id: u for u in read_corpus("an4", None, "test")}
    return [by_id[i] for i in ids]


def test_evaluate_on_a_manifest_replaces_an_earlier_file_saying_so(run, evaluated, tmp_path, capsys):
    chosen = results(run)["predictions"][1:]
    write_manifest(an4_test([p["utt_id"] for p in chosen]), tmp_path / "mine.tsv")
    before = digest(run / "results.json")
    evaluate.main([str(run), "data=manifest", "--name", "an4-test-first2", f"data.root={tmp_path}",
                   "data.test_split=mine.tsv"])
    out = capsys.readouterr().out
    assert f"{evaluated['path']} holds an earlier evaluation: measuring again, it will be replaced" in out
    report = json.loads(evaluated["path"].read_text())
    assert report["data"]["corpus"] == "manifest" and report["utterances"] == 1
    assert [p["hyp"] for p in report["predictions"]] == [p["hyp"] for p in chosen]  # the same model, same texts
    assert report["after"]["test_wer"] == pytest.approx(wer(chosen, normalised=True))
    assert digest(run / "results.json") == before
    # without --name, the name comes from the data
    assert evaluate.eval_name(OmegaConf.create(report["data"])) == f"manifest-{tmp_path.name}-mine"


def one_line_exit(err: pytest.ExceptionInfo) -> str:
    message = str(err.value.code)
    assert "\n" not in message
    return message


def test_evaluate_errors_name_the_file_or_field(run, tmp_path):
    long = wav(tmp_path / "long.wav", np.zeros(31 * 16000, dtype=np.float32))
    write_manifest([Utterance("long", long, "NO", 31.0, "s")], tmp_path / "long.tsv")
    cases = [([str(tmp_path)], f"{tmp_path} is not a run folder: it lacks .hydra/config.yaml"),
             ([str(run), "data=manifest", f"data.test_split={tmp_path}/none.tsv"],
              f"manifest not found: {tmp_path}/none.tsv"),
             ([str(run), "data.tset_split=x"], "data.tset_split: no such field in"),
             ([str(run), "data=an5"], "data=an5: no conf/data/an5.yaml"),
             ([str(run), "attention.latent_dim=48"], "the checkpoint fixes the model and attention"),
             ([str(run), "--name", "../x"], "--name '../x': use letters"),
             ([str(run), "--ood", "model.ood_test=null"], "--ood: this run's model.ood_test is null or absent; name "
              "the set: model.ood_test=speechocean762 (+model.ood_test=speechocean762 for a run from before"),
             ([str(run), "--ood", "model.ood_test=an4"], "model.ood_test='an4' is not allowed: expected one of "
              "speechocean762"),
             ([str(run), "data=manifest", f"data.test_split={tmp_path}/long.tsv"],  # after the model loads
              f"{long}: 31.0 s of audio; this model reads at most 30 s per utterance (1 test utterances are longer")]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as err:
            evaluate.main(argv)
        assert expected in one_line_exit(err), argv


@pytest.fixture(scope="module")
def run_module(run):
    """The run's best checkpoint as transcribe loads it."""
    return transcribe.model_from(str(run), [], "best")


def test_transcribe_prints_the_runs_predictions_with_timings(run, tmp_path, capsys):
    first, second = results(run)["predictions"]
    u1, u2 = an4_test([first["utt_id"], second["utt_id"]])
    mono, _ = sf.read(u1.path, dtype="float32")
    stereo = wav(tmp_path / "stereo.wav", np.stack([mono, mono], axis=1))  # mixed to mono, as the datamodule does
    write_manifest([u2], tmp_path / "one.tsv")
    jsonl = tmp_path / "out.jsonl"
    transcribe.main([str(run), u1.path, "--jsonl", str(jsonl), stereo, str(tmp_path / "one.tsv")])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{u1.path}\t{first['hyp']}", f"{stereo}\t{first['hyp']}", f"{u2.utt_id}\t{second['hyp']}"]
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["text"] for r in rows] == [first["hyp"], first["hyp"], second["hyp"]]
    assert rows[0]["audio_seconds"] == sf.info(u1.path).duration and all(r["wall_seconds"] > 0 for r in rows)
    assert rows[2]["utt_id"] == u2.utt_id and rows[2]["ref"] == u2.text and "utt_id" not in rows[0]


def test_transcribe_from_a_fresh_conversion_writes_the_runs_text_before_fine_tuning(run, evaluated, capsys):
    """Converted now as the run converted it (its config, calibrated on the same val utterances), not fine-tuned."""
    before = evaluated["report"]["before_predictions"][0]
    (u1,) = an4_test([before["utt_id"]])
    transcribe.main([*MODEL, u1.path])
    assert capsys.readouterr().out == f"{u1.path}\t{before['hyp']}\n"


def test_transcribe_bad_or_long_audio_is_one_line_naming_the_file(run, run_module, tmp_path, capsys):
    (u1,) = an4_test([results(run)["predictions"][0]["utt_id"]])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + os.urandom(200))
    for audio, expected in [(str(corrupt), f"{corrupt}: unreadable"),
                            (str(tmp_path / "absent.flac"), f"{tmp_path / 'absent.flac'}: unreadable")]:
        with pytest.raises(SystemExit) as err:  # before the model loads
            transcribe.main([str(run), u1.path, audio])
        assert one_line_exit(err).startswith(f"transcribe: {expected}")
    with pytest.raises(SystemExit) as err:
        transcribe.main([u1.path])
    assert one_line_exit(err).startswith(f"transcribe: name the model first: a run folder, a converted model "
                                         f"folder, or model=... attention=... ({u1.path} is none of them)")
    with pytest.raises(SystemExit) as err:
        transcribe.main(["model=whisperr", u1.path])
    assert "model=whisperr: In 'train': Could not find 'model/whisperr'" in one_line_exit(err)
    long = wav(tmp_path / "long.wav", np.zeros(31 * 16000, dtype=np.float32))
    with pytest.raises(ValueError, match=f"^{long}: 31.0 s of audio; this model reads at most 30 s per utterance"):
        transcribe.transcribe(run_module, transcribe.audio_list([u1.path, long]), "cpu")
    assert capsys.readouterr().out == ""  # every file is checked before any is transcribed


@torch.no_grad()
def decoder_outputs(backbone, utterances) -> tuple[torch.Tensor, list[list[int]]]:
    from asr_attention.data.audio import load_audio
    from asr_attention.generation.decoding import DecodingOptions
    from asr_attention.generation.decoding import transcribe as decode

    waves = [load_audio(u.path) for u in utterances]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    memory = backbone.encode(batch, lengths)
    prompt = torch.tensor(backbone.tokens.prompt).repeat(len(waves), 1)
    greedy = DecodingOptions(max_tokens=24, temperatures=(0.0,))  # as MODEL decodes: a looping text stops at 24
    return backbone.decode(prompt, memory), [h.tokens for h in decode(backbone, memory, greedy)]


def test_export_loads_back_without_the_run_folder_and_a_finished_run_exports(run, run_module):
    exported = run.parent / "in_run"
    assert results(run)["exported_to"] == str(exported)
    loaded = transcribe.model_from(str(exported), [], "best").backbone  # load_converted: no run folder read
    assert {v.latent_dim for v in patched_variants(loaded)} == {96}
    utterances = an4_test([p["utt_id"] for p in results(run)["predictions"]])
    (logits, tokens), (run_logits, run_tokens) = (decoder_outputs(loaded, utterances),
                                                  decoder_outputs(run_module.backbone, utterances))
    assert torch.equal(logits, run_logits) and tokens == run_tokens
    # export_dir= added to the finished run's command (issue 29): its best checkpoint is exported now
    out = train(f"hydra.run.dir={run}", f"export_dir={run.parent / 'later'}")
    assert "nothing was trained" in out and f"exported its best checkpoint to {run.parent / 'later'}" in out
    later, now = load_file(run.parent / "later" / "model.safetensors"), load_file(exported / "model.safetensors")
    assert later.keys() == now.keys() and all(torch.equal(later[k], now[k]) for k in now)


def test_a_ctc_head_with_its_own_characters_and_per_layer_ranks_round_trips(tmp_path, capsys):
    """A tokenizer built from the run's texts (no checkpoint vocabulary) and MLA ranks that differ per layer are
    saved and rebuilt from the folder alone."""
    cfg = OmegaConf.create({
        "model": {"name": "whisper", "family": "whisper", "source": None, "pretrained": False, "head": "ctc",
                  "d_model": 32, "num_heads": 4, "num_layers": 2,
                  "arch": {"max_source_positions": 50, "max_target_positions": 32, "num_mel_bins": 16}},
        "attention": {"name": "mla", "latent_dim": 16, "calibration": "plain", "rank_allocation": "spectrum",
                      "sites": ["encoder"]},
        "data": {"oov": "error"}})
    tokenizer = CharTokenizer.from_texts(["HELLO WORLD"])  # not AN4's characters
    torch.manual_seed(0)
    _, backbone = build_tokenizer_and_backbone(cfg, saved=tokenizer)
    patch_attention(backbone, cfg.attention, latent_dims=[8, 24])
    save_converted(backbone, tmp_path, cfg, tokenizer)
    torch.manual_seed(1)  # another initialisation: every weight must come from the folder
    _, loaded_tokenizer, loaded = load_converted(tmp_path)
    assert loaded_tokenizer.vocab == tokenizer.vocab and loaded.vocab_size == len(tokenizer) == 9
    assert [v.latent_dim for v in patched_variants(loaded)] == [8, 24]
    waves = 0.1 * torch.randn(2, 12000, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([12000, 7000])
    with torch.no_grad():
        expected, got = backbone.eval()(waves, lengths), loaded(waves, lengths)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    # transcribe reads the folder; its text is the greedy CTC decoding of the saved model's output
    audio = wav(tmp_path / "a.wav", waves[0].numpy())
    transcribe.main([str(tmp_path), audio])
    assert capsys.readouterr().out == f"{audio}\t{tokenizer.ctc_decode(*expected)[0]}\n"


def test_the_end_to_end_benchmark_measures_a_trained_run_beside_its_models_rows(run, tmp_path):
    """--run: the run's rows follow its model's own and carry the name --models gives that model (so the report sets
    them against transformers' rows of the same model: x hf), labelled with the run's run_name."""
    from asr_attention.bench import end_to_end
    from asr_attention.bench.end_to_end_report import best_hf

    data = end_to_end.main(["--models", "whisper", "--variants", "--hf", "dynamic", "--sets", "an4", "--limit", "2",
                            "--batches", "2", "--max-tokens", "24", "--device", "cpu", "--run", str(run),
                            "--out", str(tmp_path), "--name", "e2e"])
    label = "run:" + results(run)["config"]["run_name"]
    assert [(r["model"], r["decoder"]) for r in data["rows"]] == [("whisper", "hf-dynamic"), ("whisper", label)]
    trained = data["rows"][1]
    assert "error" not in trained, trained
    assert ("whisper", "an4", 2) in best_hf(data["rows"]) and trained["utterances"] == 2
    assert f"| whisper | an4 | {label} | 2 | 2 |" in (tmp_path / "e2e.md").read_text()


def test_trained_weight_parts_stand_in_for_the_checkpoint(run, evaluated, tmp_path):
    """training/save_trained.py, trained_weights.py: the run's best checkpoint as only the tensors training and
    conversion changed (the converted decoder attention), in parts; a copy of the run folder holding those parts and no checkpoint
    evaluates to the run's own numbers; a part missing or altered is refused by name."""
    from asr_attention.training import save_trained, trained_weights

    paths = save_trained.main([str(run), "--max-mib", "2"])
    tensors, _ = trained_weights.read_parts(run / "checkpoints")
    assert len(paths) > 1 and all(p.stat().st_size < 2.2 * 2**20 for p in paths)
    assert tensors and all(".self_attn." in k or ".encoder_attn." in k for k in tensors)
    ckpt = Path(results(run)["best_checkpoint"])
    assert sum(p.stat().st_size for p in paths) < ckpt.stat().st_size / 4
    copy = tmp_path / "run"
    copy.mkdir()
    for item in (".hydra", "results.json"):
        os.system(f"cp -r '{run / item}' '{copy / item}'")
    (copy / "checkpoints").mkdir()
    for p in paths:
        p.rename(copy / "checkpoints" / p.name)
    report = json.loads(evaluate.evaluate(copy, [], before=True).read_text())
    assert report["after"] == evaluated["report"]["after"] and report["before"] == evaluated["report"]["before"]
    assert report["predictions"] == evaluated["report"]["predictions"]
    assert report["checkpoint"] == str(copy / "checkpoints")
    last = sorted((copy / "checkpoints").glob("trained-*.pt"))[-1]
    part = torch.load(last, weights_only=True)
    name = next(iter(part["tensors"]))
    part["tensors"][name] = part["tensors"][name] + 1e-3
    torch.save(part, last)
    with pytest.raises(ValueError, match="is not the run's"):
        evaluate.evaluate(copy, [])
    last.unlink()
    with pytest.raises(ValueError, match="not one complete set"):
        evaluate.evaluate(copy, [])
