"""Studies: experiment files (experiment.py), the cells a study needs (cells.py), the study in its storage
(board.py), the worker loop (worker.py), how workers are launched (launchers.py) and the summary (summary.py)."""
