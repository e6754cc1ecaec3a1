"""Turning a study's finished runs into its report (reporting/report.py: write_report): each arm at each
budget over its seeds (cells), the typed summary of every figure (summary, with stats and references),
the plots, the model outputs (inference: samples, token images, the GPT-2 row) and the report's sections.
It reads what launch/ planned and trained; launch/ never imports it."""
