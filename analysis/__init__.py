"""The study runner's pieces: the study file schema (spec), reading finished runs (results), accuracy
against difficulty on synthetic tasks (sweep), the plots and the report. study.py at the repository
root is the entry point."""
