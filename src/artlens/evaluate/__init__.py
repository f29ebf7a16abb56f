"""artlens.evaluate: a model scored on labelled data: metrics and confusion (`metrics`),
calibration (`calibration`), robustness to degraded copies (`robustness`), plots and the HTML report
(`plots`, `report`, `curves`), one task's numbers and galleries (`tasks`), the whole run
(`pipeline`), and the artist head's held-out numbers with its `unknown artist` rule (`artist`)."""
