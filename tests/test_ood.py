"""The out-of-domain test of a run (training/ood.py), without a model: which phases it measures, how it scores
them, and that it leaves the run's RNG and the module as it found them. End to end on Whisper tiny.en:
tests/test_commands.py (its run fixture tests on 2 speechocean762 utterances)."""

from types import SimpleNamespace

import torch

from asr_attention.runs.results import Results
from asr_attention.training.ood import OODTest, ood_data_config


def test_the_set_reads_the_runs_batching_and_policies_and_its_own_split_and_limit():
    data = {"corpus": "an4", "root": "/data/an4", "test_split": "test", "limit_test": 5, "limit_ood": 3,
            "batch_size": 8, "num_workers": 2, "on_bad_audio": "skip", "oov": "error", "max_duration": 10.0}
    assert ood_data_config(data, "speechocean762") == {
        "batch_size": 8, "num_workers": 2, "on_bad_audio": "skip", "oov": "error",
        "corpus": "speechocean762", "root": None, "test_split": "test", "limit_test": 3}


def test_a_resumed_run_measures_only_the_phases_it_lacks_under_their_own_rng(tmp_path):
    path = tmp_path / "results.json"
    results = Results(path, ood={"before": {"test_wer": 0.5}})  # what a killed run recorded
    datamodule = SimpleNamespace(datasets={"test": ["u1", "u2"]}, skipped=[])
    ood = OODTest("speechocean762", datamodule, results, seed=0)
    calls = []

    def test(module, datamodule, ckpt_path):
        calls.append((module.test_prefix, module.scoring, ckpt_path, torch.rand(1).item()))
        module.last_predictions = [{"utt_id": f"u{i}", "ref": "A", "hyp": "a"} for i in range(30)]
        return [{"ood_after_test_wer": 0.25, "ood_after_test_loss": 1.0}]

    module = SimpleNamespace(scoring="an4", test_prefix="test", last_predictions=[])
    torch.manual_seed(123)
    expected_next = torch.rand(1).item()
    torch.manual_seed(123)
    ood.test(SimpleNamespace(test=test), module, "before")  # held: not measured again
    ood.test(SimpleNamespace(test=test), module, "after", ckpt_path="best.ckpt")
    assert torch.rand(1).item() == expected_next  # the run's RNG goes on as if nothing had drawn from it
    torch.manual_seed(0)
    assert calls == [("ood_after_test", "english", "best.ckpt", torch.rand(1).item())]  # drawn under the run's seed
    assert (module.scoring, module.test_prefix) == ("an4", "test")
    stored = Results(path).get("ood")
    assert stored["before"] == {"test_wer": 0.5} and stored["after"] == {"test_wer": 0.25, "test_loss": 1.0}
    assert (stored["set"], stored["normaliser"], stored["utterances"]) == ("speechocean762", "english", 2)
    assert len(stored["predictions"]) == 20
