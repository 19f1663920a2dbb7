"""Runs: what a run does, described once (`siso.runs.spec.RunSpec`), the one function that runs it
(`siso.runs.run.run`: learn, edit, reuse a saved subject), the models runs share (`siso.runs.models.Models`), what a
run is asked to make (`siso.runs.jobs`), the run folder it writes (`siso.runs.folder`) and its memory meter
(`siso.runs.memory`)."""
