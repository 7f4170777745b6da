"""Encoder speed and memory benchmark: `python -m asr_attention.bench model=… attention=…`.

At the configured sizes with random weights (model.pretrained is forced false): whole-backbone forward (feature
front end included: wav2vec2's conv encoder, the Branchformer's Fbank + CNN) as RTFx for each batch x dtype, peak
GPU memory, one attention site timed on its captured call x num_layers, measured vs analytic cache bytes, a
long-form row (batch 1, bf16, 5 min), and for relative-position models the native rel-pos attention alone vs our
MHA variant. The unpatched model (attention=native) is measured first in the same process and stays resident;
each variant's forwards are timed in alternation with it, and every ratio is variant / native. Writes
results.json and results.md in the Hydra output dir. measure.py: the measurements;
report.py: ratios, tables, and the suite merge (benchmarks/run_gpu_suite.sh).
"""
