# device side: stop the training runs, tests and tables (from a file, so no pattern matches the caller)
for pat in "side_by_[s]ide" "-m asr_attention[.]train" "-m asr_attention[.]reports" "-m pytes[t]"; do pkill -f -- "$pat"; done
