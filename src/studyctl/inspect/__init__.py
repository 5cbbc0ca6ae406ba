"""Read-only views of studies for people: summaries as plain dicts (`summary`), reports
(`report`) and optuna-dashboard (`dashboard`)."""
