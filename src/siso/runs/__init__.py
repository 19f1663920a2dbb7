"""Runs: what a run is asked to make (`siso.runs.jobs`), the run folder it writes (`siso.runs.folder`), the runs
themselves (`siso.runs.run`: generate, reuse a saved subject, edit) and their memory meter (`siso.runs.memory`)."""
