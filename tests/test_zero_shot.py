"""`python -m asr_attention.reports.zero_shot` measures what it is asked to, or says it reuses a stored row (no model
loads here: a row that would be measured is measured by a stand-in)."""

import json
import shutil
from pathlib import Path

import pytest

from asr_attention.reports import zero_shot

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "whisper_zero_shot.json"
README_COMMAND = {"limit": None, "batch_size": 16, "device": "cuda"}  # `--device cuda`, as the README prints it


class StandIn:
    """ZeroShot without Whisper: every row transcribes one utterance right."""
    built = []

    def __init__(self, limit, batch_size, device, model="whisper", test_set="an4"):
        assert (model, test_set) == ("whisper", "an4")  # the committed table's: tiny.en on AN4 test
        StandIn.built.append((limit, batch_size, device))

    def run(self, attention, sites):
        return {"attention": attention, "sites": sites, "seconds": 0.0, "fidelity": None,
                "predictions": [{"utt_id": "u", "ref": "YES", "hyp": "YES", "temperature": 0.0}]}


@pytest.fixture
def table(tmp_path, monkeypatch):
    StandIn.built = []
    monkeypatch.setattr(zero_shot, "ZeroShot", StandIn)
    return Path(shutil.copy(COMMITTED, tmp_path / "zero_shot.json"))


def test_the_committed_rows_record_what_they_were_measured_with():
    rows = json.loads(COMMITTED.read_text())
    assert {json.dumps(r["measured_with"]) for r in rows.values()} == {json.dumps(README_COMMAND)}
    assert {len(r["predictions"]) for r in rows.values()} == {130}  # the whole AN4 test set: limit null


def test_other_settings_are_refused_naming_both_instead_of_reprinting_the_stored_table(table):
    """`--limit 4` used to print the committed 130-utterance table, measuring nothing."""
    with pytest.raises(SystemExit) as err:
        zero_shot.main(["--limit", "4", "--device", "cpu", "--out", str(table)])
    assert str(err.value) == (
        f'{table} holds rows measured with {{"limit": null, "batch_size": 16, "device": "cuda"}}, not {{"limit": 4, '
        f'"batch_size": 16, "device": "cpu"}}: new rows would be mixed with them, and theirs are not what was asked '
        f"for. Write elsewhere (--out NEW.json), or measure every row anew with --fresh (replaces {table}).")
    assert StandIn.built == [] and table.read_bytes() == COMMITTED.read_bytes()


def test_the_same_settings_reuse_the_stored_rows_and_say_so(table, capsys):
    zero_shot.main(["--device", "cuda", "--out", str(table), "--variants", "mha", "--sites", "encoder"])
    out = capsys.readouterr().out
    assert StandIn.built == []  # nothing measured: no model loaded
    assert (f"mha @ encoder: WER 2.5 % (reused: stored in {table}, measured with {json.dumps(README_COMMAND)}; "
            f"--fresh measures it again)") in out


def test_fresh_measures_every_row_anew(table, capsys):
    zero_shot.main(["--limit", "4", "--device", "cpu", "--out", str(table), "--variants", "mha", "--sites",
                    "encoder", "--fresh"])
    assert StandIn.built == [(4, 16, "cpu")]
    rows = json.loads(table.read_text())
    assert list(rows) == ["unconverted", "mha @ encoder"]  # the stored rows were replaced, not mixed in
    assert all(r["measured_with"] == {"limit": 4, "batch_size": 16, "device": "cpu"} for r in rows.values())
    assert "reused" not in capsys.readouterr().out
