"""wmbook.device: device choice, seeding, mixed precision, moving batches, environment stamp."""

import contextlib
import random
import re
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch

from wmbook import device as dev
from wmbook.device import (
    amp_dtype,
    autocast,
    environment_stamp,
    format_stamp,
    grad_scaler,
    pick_device,
    seed_everything,
    set_threads,
    to_device,
)


def _fake_hardware(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(dev, "_mps_available", lambda: mps)


# -- pick_device ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _fake_hardware(monkeypatch, cuda, mps)
    assert pick_device("auto") == torch.device(expected)
    assert pick_device() == torch.device(expected)  # "auto" is the default


def test_auto_is_case_and_space_insensitive(monkeypatch):
    _fake_hardware(monkeypatch, False, False)
    assert pick_device("  AUTO ") == torch.device("cpu")


def test_explicit_cpu_even_when_gpu_present(monkeypatch):
    _fake_hardware(monkeypatch, True, True)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


def test_explicit_cuda_is_honoured_when_available(monkeypatch):
    _fake_hardware(monkeypatch, True, False)
    assert pick_device("cuda") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA"])
def test_explicit_cuda_without_gpu_raises_instead_of_falling_back(monkeypatch, name):
    _fake_hardware(monkeypatch, False, True)
    with pytest.raises(RuntimeError, match="CUDA"):
        pick_device(name)


def test_explicit_mps_without_mps_raises(monkeypatch):
    _fake_hardware(monkeypatch, True, False)
    with pytest.raises(RuntimeError, match="MPS"):
        pick_device("mps")


@pytest.mark.parametrize("name", ["gpu", "tpu", "", "xla:0"])
def test_unknown_device_name_raises_naming_the_choices(name):
    with pytest.raises(ValueError) as info:
        pick_device(name)
    message = str(info.value)
    for choice in dev.DEVICE_CHOICES:
        assert choice in message


def test_non_string_device_raises_type_error():
    with pytest.raises(TypeError):
        pick_device(0)


# -- seeding ----------------------------------------------------------------------------


def _draws():
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(),
            torch.nn.Linear(3, 2).weight.detach().clone())


def test_same_seed_gives_same_draws():
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    second = _draws()
    assert first[:3] == second[:3]
    assert torch.equal(first[3], second[3])


def test_different_seeds_give_different_draws():
    seed_everything(1)
    first = _draws()
    seed_everything(2)
    second = _draws()
    assert first[0] != second[0]
    assert first[1] != second[1]
    assert first[2] != second[2]


def test_numpy_integer_and_large_seeds_are_accepted():
    seed_everything(np.int64(7), deterministic=False)
    a = np.random.rand()
    seed_everything(7, deterministic=False)
    assert np.random.rand() == a
    seed_everything(2**40, deterministic=False)  # beyond NumPy's 32-bit seed range


@pytest.mark.parametrize("seed", [-1, True, False, 1.5, "3", None])
def test_invalid_seed_rejected(seed):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(seed)


def test_seed_everything_deterministic_flag_sets_torch_mode():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic


# -- threads ----------------------------------------------------------------------------


def test_set_threads_explicit_and_default():
    assert set_threads(1) == 1
    assert torch.get_num_threads() == 1
    n = set_threads()
    assert 1 <= n <= 4
    assert torch.get_num_threads() == n


def test_set_threads_rejects_zero():
    with pytest.raises(ValueError):
        set_threads(0)


# -- mixed precision --------------------------------------------------------------------


def test_autocast_is_a_no_op_on_cpu():
    ctx = autocast("cpu")
    assert isinstance(ctx, contextlib.nullcontext)
    layer = torch.nn.Linear(4, 2)
    with ctx:
        out = layer(torch.randn(3, 4))
    assert out.dtype == torch.float32
    assert amp_dtype("cpu") == torch.float32


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return contextlib.nullcontext()


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_autocast_on_cuda_asks_torch_autocast(monkeypatch, bf16, dtype):
    recorder = _Recorder()
    monkeypatch.setattr(torch, "autocast", recorder)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert amp_dtype("cuda") == dtype
    autocast(torch.device("cuda"))
    assert recorder.calls == [(("cuda",), {"dtype": dtype})]


def test_autocast_disabled_on_cuda_is_a_no_op(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(torch, "autocast", recorder)
    assert isinstance(autocast("cuda", enabled=False), contextlib.nullcontext)
    assert recorder.calls == []


def test_grad_scaler_disabled_on_cpu():
    assert not grad_scaler("cpu").is_enabled()
    assert not grad_scaler(torch.device("cpu"), enabled=True).is_enabled()


@pytest.mark.parametrize(("bf16", "active"), [(False, True), (True, False)])
def test_grad_scaler_active_only_for_float16_on_cuda(monkeypatch, bf16, active):
    made = []

    def fake_scaler(device, enabled):
        made.append((device, enabled))
        return object()

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.amp, "GradScaler", fake_scaler)
    grad_scaler("cuda")
    grad_scaler("cuda", enabled=False)
    assert made == [("cuda", active), ("cuda", False)]


def test_amp_dtype_does_not_count_emulated_bfloat16(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: asked.append(k) or False)
    assert amp_dtype("cuda") == torch.float16  # a pre-Ampere GPU: float16 with a scaler
    assert asked == [{"including_emulation": False}]


def test_amp_dtype_asks_about_the_gpu_it_is_given(monkeypatch):
    selected = []

    @contextlib.contextmanager
    def select(index):
        selected.append(index)
        yield

    monkeypatch.setattr(torch.cuda, "device", select)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("cuda:1") == torch.bfloat16
    assert amp_dtype("cuda") == torch.bfloat16  # the current GPU: nothing to select
    assert selected == [1]


@pytest.mark.parametrize("name", ["cpu", "mps", "meta"])
def test_no_mixed_precision_off_cuda_and_cuda_is_never_asked(monkeypatch, name):
    def no_gpu_here(*args, **kwargs):
        raise AssertionError("asked CUDA about a device that is not a GPU")

    recorder = _Recorder()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_gpu_here)
    monkeypatch.setattr(torch, "autocast", recorder)
    assert amp_dtype(name) == torch.float32
    assert isinstance(autocast(name), contextlib.nullcontext)
    assert not grad_scaler(name).is_enabled()
    assert recorder.calls == []


# -- to_device --------------------------------------------------------------------------

Pair = namedtuple("Pair", ["left", "right"])


def test_to_device_moves_nested_structures_and_keeps_their_types():
    batch = {
        "tensor": torch.arange(3),
        "array": np.array([1.0, 2.0], dtype=np.float32),
        "list": [torch.zeros(2), np.ones(2)],
        "tuple": (torch.ones(1), "label"),
        "pair": Pair(np.zeros(1), torch.ones(1)),
        "ordered": OrderedDict(a=np.arange(2)),
        "number": 3,
        "text": "keep me",
    }
    moved = to_device(batch, "cpu")
    assert type(moved) is dict and set(moved) == set(batch)
    assert torch.equal(moved["tensor"], torch.arange(3))
    assert isinstance(moved["array"], torch.Tensor) and moved["array"].dtype == torch.float32
    assert torch.equal(moved["array"], torch.tensor([1.0, 2.0]))
    assert type(moved["list"]) is list and all(isinstance(x, torch.Tensor) for x in moved["list"])
    assert type(moved["tuple"]) is tuple and moved["tuple"][1] == "label"
    assert isinstance(moved["tuple"][0], torch.Tensor)
    assert type(moved["pair"]) is Pair
    assert isinstance(moved["pair"].left, torch.Tensor) and isinstance(moved["pair"].right, torch.Tensor)
    assert type(moved["ordered"]) is OrderedDict and isinstance(moved["ordered"]["a"], torch.Tensor)
    assert moved["number"] == 3 and moved["text"] == "keep me"


def test_to_device_changes_the_device(monkeypatch):
    seen = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        seen.append(args[0] if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    to_device([np.zeros(2), {"x": torch.ones(1)}], "meta")
    assert seen == [torch.device("meta"), torch.device("meta")]
    out = to_device(torch.ones(2), torch.device("meta"))
    assert out.device.type == "meta"


# -- environment stamp ------------------------------------------------------------------


def test_environment_stamp_keys_and_values():
    stamp = environment_stamp("cpu")
    expected = {"device", "python", "torch", "gymnasium", "numpy", "torch threads", "cpu", "cpu capability",
                "cpu cores", "platform"}
    assert expected <= set(stamp)
    assert "gpu" not in stamp and "cuda" not in stamp
    assert stamp["device"] == "cpu"
    assert stamp["torch"] == torch.__version__
    assert stamp["numpy"] == np.__version__
    assert stamp["torch threads"] == str(torch.get_num_threads())
    assert all(isinstance(value, str) for value in stamp.values())


def test_stamp_names_the_instruction_set_torch_picked_its_cpu_kernels_for():
    capability = environment_stamp("cpu")["cpu capability"]
    assert capability == torch.backends.cpu.get_cpu_capability()
    # one of the values torch's own docstring lists ("DEFAULT", "AVX2", "AVX512", ...)
    documented = re.findall(r'- "([^"]+)"', torch.backends.cpu.get_cpu_capability.__doc__)
    assert "AVX2" in documented and capability in documented
    assert f"cpu capability : {capability}" in format_stamp(environment_stamp("cpu"))


def test_cpu_model_reads_the_processor_name(monkeypatch, tmp_path):
    from wmbook import device as device_module

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: Test\nmodel name\t: Test CPU 3000\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k))
    assert device_module.cpu_model() == "Test CPU 3000"
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError("no such file")))
    monkeypatch.setattr(device_module.platform, "processor", lambda: "")
    assert device_module.cpu_model() == "unknown"


def test_format_stamp_aligns_keys():
    text = format_stamp({"a": "1", "longer": "2"})
    assert text.splitlines() == ["a      : 1", "longer : 2"]


def test_to_device_handles_a_defaultdict():
    from collections import defaultdict

    batch = defaultdict(list, obs=np.zeros(2))
    moved = to_device(batch, "cpu")
    assert isinstance(moved["obs"], torch.Tensor)
