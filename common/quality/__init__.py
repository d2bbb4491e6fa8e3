"""Quality: error rates, scoring, evaluation, export verification, backend parity, the run report and plots."""
