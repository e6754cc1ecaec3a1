"""Planning and running a study (study.py is the entry point): the study file (spec), the arms checked
and their data prepared before anything trains (preflight), which runs to train and with which train.py
arguments (plan), training them (runner), and reading finished runs back to choose each arm's learning
rate (results). Paths in a study file are relative to the repository root (paths). The report is
reporting/'s work; nothing here imports it."""
