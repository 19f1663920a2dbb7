"""Evaluation: benchmark suites (`siso.eval.suites`; multi-subject items `siso.eval.multi`), per-item metrics
(`siso.eval.metrics`; per subject on its box, `siso.eval.multiscore`) and set metrics (`siso.eval.setmetrics`,
`siso.eval.distances`), resumable sharded scoring (`siso.eval.score`), and siso's own images for a suite
(`siso.eval.generate`, `siso.eval.edit`; saved subjects composed beside learning together, `siso.eval.fromsaved`
and `siso.eval.comparison`); ``siso eval`` is `siso.cli.eval`."""
