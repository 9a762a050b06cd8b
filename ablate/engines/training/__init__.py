"""Training one model: the config check and model plan (plan.py), the optimizer step shared with `profile`
(step.py), the loop with its checkpoints (trainer.py), and run folders with resume (runs.py)."""
