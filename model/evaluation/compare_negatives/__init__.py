"""The negatives study (the ``compare_negatives`` flow): plan.py lists its runs and estimates their time,
report.py compares them."""
