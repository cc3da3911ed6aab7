"""Device and torchrun-world resolution (hpdm_cli/device.py): the specs, the one-line errors, the rank variables."""

import pytest
import torch

from hpdm_cli.device import DeviceError, World, emulated_bf16_warning, parse_device, resolve_device, world


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` visible CUDA devices (0: none)."""
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


def test_world_reads_the_torchrun_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert world() == World(0, 1, 0) == (0, 1, 0)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank, size, local = world()
    assert (rank, size, local) == (5, 8, 1) and world().local_rank == 1


def test_parse_device_names_without_looking_at_the_machine(gpus):
    gpus(0)
    assert parse_device("auto") is None and parse_device(None) is None and parse_device(" AUTO ") is None
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("cuda:3") == torch.device("cuda", 3)                  # not checked here
    dev = torch.device("cpu")
    assert parse_device(dev) is dev


@pytest.mark.parametrize("spec", ["tpu", "mps", "cuda:x", "gpu0", "meta"])
def test_unknown_specs_are_one_line_errors_naming_the_option(spec):
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    msg = str(e.value)
    assert msg.startswith("--device ") and "expected auto, cpu, cuda or cuda:N" in msg and "\n" not in msg
    with pytest.raises(DeviceError, match=r'^train.device = "'):
        parse_device(spec, option="train.device")


def test_cpu_machine(gpus):
    gpus(0)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", 3) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^--device cuda: no CUDA device is visible; use --device cpu$"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match=r'^train.device = "cuda": no CUDA device is visible; use train.device=cpu$'):
        resolve_device("cuda", 0, option="train.device")


def test_gpu_machine(gpus):
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda")                     # no rank given: the current GPU
    assert resolve_device("auto", 1) == resolve_device("cuda", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", 0) == torch.device("cuda", 1)
    assert resolve_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^--device cuda:2: only 2 CUDA device\(s\) visible$"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match=r"^local rank 2 but only 2 CUDA device\(s\) are visible; .*--nproc-per-node"):
        resolve_device("auto", 2)


def test_training_names_its_recipe_key(gpus, monkeypatch):
    from hpdm_cli.train.distributed import init_distributed
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    gpus(0)
    assert init_distributed("auto").device == torch.device("cpu")
    with pytest.raises(DeviceError, match=r'^train.device = "cuda": no CUDA device is visible'):
        init_distributed("cuda")


def test_sampling_and_fvd_share_the_messages(gpus):
    from hpdm_cli.eval.fvd import I3DExtractor
    from hpdm_cli.checkpoint import load_generator
    gpus(0)
    for call in (lambda: load_generator("unused", "cuda:1"), lambda: I3DExtractor(device="cuda")):
        with pytest.raises(DeviceError, match=r"^--device cuda(:1)?: no CUDA device is visible; use --device cpu$"):
            call()


@pytest.mark.parametrize("caps,warned", [({}, True), ({"avx512_bf16": False, "amx_bf16": False}, True),
                                         ({"avx512_bf16": True}, False), ({"amx_bf16": True}, False)])
def test_bf16_on_a_cpu_without_bf16_instructions_is_named_slow(gpus, monkeypatch, caps, warned):
    """--bf16 on a CPU that torch must emulate bf16 on gets a one-line warning; GPUs and bf16 CPUs none."""
    gpus(0)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    msg = emulated_bf16_warning("cpu")
    assert (msg is not None) == warned and emulated_bf16_warning("auto") == msg
    if warned:
        assert "--bf16" in msg and "emulated" in msg and "leave --bf16 out" in msg and "\n" not in msg
    assert emulated_bf16_warning("cuda") is None                    # the command reports the missing GPU itself
    gpus(1)
    assert emulated_bf16_warning("auto") is None and emulated_bf16_warning("cuda") is None



def test_bench_warns_before_timing_bf16_on_a_cpu_that_emulates_it(gpus, monkeypatch):
    """`hpdm bench --sampling` times bf16 by default: on such a CPU it says so (and how to avoid it) once the options
    are checked and before any timing; fp32, or a CPU with bf16 instructions, gets no warning."""
    import hpdm_cli.drivers.bench as bench
    import hpdm_cli.train.step as step
    from hpdm_cli.config import ConfigError

    class Timing(Exception):
        pass

    def stop(*a, **k):
        raise Timing
    gpus(0)
    monkeypatch.setattr(step, "set_precision", stop)            # the sampling bench's first step after its checks
    monkeypatch.setattr(bench, "_time_training", stop)
    heard = []
    for caps in ({}, {"avx512_bf16": True}):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        for sampling, precision in ((True, None), (True, "fp32"), (False, "bf16"), (False, "fp32")):
            heard.clear()
            with pytest.raises(Timing):
                bench.run_bench("tiny", sampling=sampling, precision=precision, warn=heard.append)
            expect = not caps and precision in (None, "bf16")
            assert len(heard) == expect, (caps, sampling, precision, heard)
            if expect:
                assert heard[0].startswith("bf16") and "time --precision fp32 on a CPU" in heard[0]
    heard.clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    with pytest.raises(ConfigError, match="--batch"):
        bench.run_bench("tiny", sampling=True, batch=-2, warn=heard.append)
    assert heard == []                                          # a bad option is the only line


def test_tf32_is_one_switch_set_for_a_block_and_restored():
    """TF32 for a GPU's float32 matmuls and convolutions: both flags together, and the previous setting back after a
    block (the FVD detector's fp32 reference inside a bf16 training process)."""
    import torch
    from hpdm_cli.device import tf32, use_tf32
    before = use_tf32(False)
    try:
        with tf32(True):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert use_tf32(True) == (False, False)
        with tf32(False):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
