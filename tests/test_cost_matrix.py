"""The study's cost matrix: a row per variant in reading order, a column per site, 'not run' where nothing ran,
and the seed count where a cell has fewer than the fullest. SYNTHETIC aggregates."""

from asr_attention.reports.cost_matrix import markdown, points, variant_key


def agg(variant, sites, cost, sd=0.001, seeds=(0, 1, 2), cut=75.0, wer=0.01, head="seq2seq", chosen=True):
    return {"model": "whisper", "head": head, "sites": sites, "variant": variant, "chosen": chosen,
            "seeds": list(seeds), "cost_after": cost, "cost_after_sd": sd, "reduction_window": cut, "wer_after": wer}


def test_variants_read_control_then_mla_act_plain_gqa_linear():
    labels = ["linear elu", "gqa kv=1", "mla r=96", "mla r=48 act", "gqa kv=3", "mha", "mla r=192 act"]
    assert sorted(labels, key=variant_key) == ["mha", "mla r=192 act", "mla r=48 act", "mla r=96", "gqa kv=3",
                                               "gqa kv=1", "linear elu"]


def test_matrix_cells_and_gaps():
    aggs = [agg("mha", "cross", 0.0, wer=0.0017), agg("mha", "decoder_self", 0.0, wer=0.0025),
            agg("mla r=96 act", "cross", 0.0038, sd=0.0022, cut=67.4),
            agg("gqa kv=2", "decoder_self", 0.0034, sd=0.0007, cut=15.3, seeds=(0, 1)),
            agg("gqa kv=2", "cross", 0.5, chosen=False),  # another recipe's: left out
            agg("mha", "encoder", 0.0, head="ctc")]  # one site only: no matrix
    lines = markdown(aggs, ("mha",))
    assert lines[0] == "### Cost matrix: whisper seq2seq"
    assert "| variant | decoder self | cross |" in lines
    assert lines[-4:] == ["| mha (control) | WER 0.25 % | WER 0.17 % |",
                          "| mla r=96 act | not run | +0.38 ± 0.22 (67.4 %) |",
                          "| gqa kv=2 | +0.34 ± 0.07 (15.3 %), 2 seeds | not run |", ""]
    assert not any("ctc" in line for line in lines)


def test_points_never_read_minus_zero():
    assert (points(-1e-17, 0.0013), points(0.0029, None), points(-0.0067, 0.0007)) == ("+0.00 ± 0.13", "+0.29",
                                                                                       "-0.67 ± 0.07")


def test_a_site_without_a_decode_cache_figure_shows_the_cost_alone():
    aggs = [agg("mha", "decoder_self", 0.0), agg("mha", "cross", 0.0),
            agg("linear elu", "decoder_self", 0.02, cut=None), agg("linear elu", "cross", 0.03, cut=10.0)]
    assert "| linear elu | +2.00 ± 0.10 | +3.00 ± 0.10 (10.0 %) |" in markdown(aggs, ("mha",))
