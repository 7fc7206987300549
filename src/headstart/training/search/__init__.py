"""Auto mode's search: which recipes it tries (plan.py), how it scores them (folds.py, heads.py) and the loop
within the budget (run.py)."""
