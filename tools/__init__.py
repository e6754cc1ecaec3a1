"""What the benchmarks, the GPU check and the tests share, kept out of the training core (engine/):
timing training steps and searching the largest batch (timing.py), which attention kernel runs
(sdpa.py), the seconds-long dataset and run of the smoke checks (smoke.py), and a run's checkpoint as an
lm-eval model (lm_harness.py). bench.py, harness.py and scripts/ are the tools; they import this package,
never the other way round."""
