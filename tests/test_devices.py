"""Devices and dtypes (`siso.devices`)."""


def test_dtype_auto_is_bf16_on_cuda_and_fp32_elsewhere():
    from siso.devices import resolve_dtype

    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bf16"
    assert resolve_dtype("auto", "cpu") == resolve_dtype("auto", "mps") == "fp32"
    assert resolve_dtype("fp16", "cpu") == "fp16"  # a dtype asked for is kept


def test_own_cpu_memory_copies_unaligned_weights_and_keeps_their_values():
    import torch

    from siso.devices import CPU_ALIGNMENT, own_cpu_memory

    storage = torch.arange(40, dtype=torch.float32)
    module = torch.nn.Linear(4, 8, bias=False)
    module.weight.data = storage[2:34].view(8, 4)  # 8 bytes into a tensor: as a view of a memory-mapped file
    module.register_buffer("aligned", torch.ones(3))
    assert module.weight.data_ptr() % CPU_ALIGNMENT
    assert own_cpu_memory(module, None) == 1  # only the unaligned one
    assert module.weight.data_ptr() % CPU_ALIGNMENT == 0
    assert torch.equal(module.weight, storage[2:34].view(8, 4)) and module.weight.requires_grad


def test_a_loaded_backbone_holds_every_cpu_weight_in_aligned_memory(model_dirs):
    import torch

    from siso.backbones import load_backbone
    from siso.devices import CPU_ALIGNMENT

    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    modules = [m for m in backbone.pipe.components.values() if isinstance(m, torch.nn.Module)]
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    assert tensors and all(t.data_ptr() % CPU_ALIGNMENT == 0 for t in tensors)
