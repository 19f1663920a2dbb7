"""How an optimization iteration runs, never what it computes: the lean autograd graph (`siso.accel.lean`), fused
upsampling (`siso.accel.upsample`), ``torch.compile`` (`siso.accel.compile`), and the one composer that applies
them from `siso.config.AccelSettings` (`siso.accel.stack.accelerated`)."""

from siso.accel.compile import compiled, eager
from siso.accel.lean import lean_graph
from siso.accel.stack import accelerated
from siso.accel.upsample import fused_upsampling, upsample_conv_kernel

__all__ = ["accelerated", "compiled", "eager", "fused_upsampling", "lean_graph", "upsample_conv_kernel"]
