"""The GPU guard (rain.train.gpu_guard) on CPU, with a fake NVML module in place of pynvml that reports scripted
temperatures, and a fake clock so a pause takes no time."""

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from rain.config import TrainConfig, load_config
from rain.errors import RainError
from rain.train import gpu_guard
from rain.train.gpu_guard import GpuGuard
from rain.train.metrics import read_metrics
from rain.train.trainer import train
from tests.conftest import tiny_run_config


class FakeNVML(types.ModuleType):
    """What the guard uses of pynvml. Each temperature read takes the next of `temps` (the last one repeats)."""

    NVML_TEMPERATURE_GPU, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2

    class NVMLError(Exception):
        pass

    class NVMLError_NoPermission(NVMLError):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    def __init__(self, temps=(60,), fail_on_read=None, init_error=None, set_limit_error=None):
        super().__init__("pynvml")
        self.temps, self.reads, self.fail_on_read = list(temps), 0, fail_on_read
        self.init_error, self.set_limit_error = init_error, set_limit_error
        self.power_limit_mw = 350_000

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlDeviceGetHandleByUUID(self, uuid):
        assert uuid == b"GPU-fake"
        return "handle"

    def nvmlDeviceGetTemperature(self, handle, sensor):
        self.reads += 1
        if self.reads == self.fail_on_read:
            raise self.NVMLError_GpuIsLost("GPU is lost")
        return self.temps.pop(0) if len(self.temps) > 1 else self.temps[0]

    def nvmlDeviceGetPowerUsage(self, handle):
        return 231_456  # mW

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return {self.NVML_CLOCK_SM: 1695, self.NVML_CLOCK_MEM: 9751}[clock]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=5 * 2**30)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x20 | 0x4  # a software thermal slowdown and the power cap

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return self.power_limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle, milliwatts):
        if self.set_limit_error:
            raise self.set_limit_error
        self.power_limit_mw = milliwatts


class FakeClock:
    """monotonic() and sleep() for the guard: sleeping moves the clock on at once."""

    def __init__(self):
        self.now, self.slept, self.on_sleep = 1000.0, [], lambda: None

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        self.on_sleep()


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(gpu_guard, "monotonic", fake.monotonic)
    monkeypatch.setattr(gpu_guard, "sleep", fake.sleep)
    return fake


@pytest.fixture
def fake_gpu(monkeypatch, clock):
    """install(**FakeNVML args): the run's device counts as an NVIDIA GPU that this fake NVML reports on."""

    def install(**kw):
        nvml = FakeNVML(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        monkeypatch.setattr(gpu_guard, "gpu_uuid", lambda device: "GPU-fake")
        return nvml

    return install


def run(tiny_data, tmp_path, lines, **train_cfg):
    """A 12-step tiny run on the CPU, logging every 2 steps; its summary and records."""
    cfg = tiny_run_config(tiny_data, checkpoints=0, eval_every=12, **train_cfg)
    summary = train(cfg, tmp_path / "run", log=lines.append)
    return summary, read_metrics(tmp_path / "run")


def gpu_lines(lines):
    """What the guard said (the end-of-run summary's compute bill also names GPU-hours: not the guard's)."""
    return [line for line in lines if "gpu guard" in line.lower()]


def kind(records, name):
    return [r for r in records if r["kind"] == name]


def test_train_records_carry_the_gpu_readings_read_only_at_log_steps(fake_gpu, tiny_data, tmp_path):
    nvml = fake_gpu(temps=[61, 62, 63, 64, 65, 66])
    lines = []
    _, records = run(tiny_data, tmp_path, lines)
    trains = kind(records, "train")
    assert [r["gpu_temp_c"] for r in trains] == [61, 62, 63, 64, 65, 66]
    assert {"gpu_power_w": 231.5, "gpu_sm_clock_mhz": 1695, "gpu_mem_clock_mhz": 9751, "gpu_mem_used_mib": 5120,
            "gpu_throttle": ["sw_power_cap", "sw_thermal_slowdown"]}.items() <= trains[0].items()
    assert nvml.reads == len(trains)  # no limits: NVML is read at log steps only, not every step
    assert gpu_lines(lines) == []  # a watched GPU without limits says nothing
    assert kind(records, "guard") == []


def test_a_hot_gpu_pauses_until_it_cools_below_the_resume_threshold(fake_gpu, clock, tiny_data, tmp_path):
    # Reads: the start, step 1, step 2 (85 °C: over the limit), then four while paused, the last one cool enough.
    fake_gpu(temps=[70, 70, 85, 84, 79, 76, 74, 70])
    lines = []
    summary, records = run(tiny_data, tmp_path, lines, gpu_max_temp=80.0, gpu_check_every=1)
    assert summary["steps"] == 12
    (pause,) = kind(records, "guard")
    assert pause["event"] == "gpu_pause" and pause["step"] == 2 and pause["ended"] == "cooled"
    assert "85 °C" in pause["reason"] and "gpu_max_temp" in pause["reason"]
    assert pause["before"]["gpu_temp_c"] == 85 and pause["after"]["gpu_temp_c"] == 74  # resumes below 80 - 5
    assert pause["seconds"] == 4 * gpu_guard.POLL_SECONDS and clock.slept == [gpu_guard.POLL_SECONDS] * 4
    assert not any(line.startswith("warning") for line in gpu_lines(lines))


def test_a_limit_below_idle_ends_each_pause_at_the_maximum_with_a_warning(fake_gpu, tiny_data, tmp_path):
    fake_gpu(temps=[45])  # never cools below 30 - 5
    lines = []
    summary, records = run(tiny_data, tmp_path, lines, gpu_max_temp=30.0, gpu_max_pause=10.0, gpu_check_every=6)
    assert summary["steps"] == 12  # the run never hangs
    pauses = kind(records, "guard")
    assert [(p["step"], p["ended"], p["seconds"]) for p in pauses] == [(6, "max_pause", 10.0), (12, "max_pause", 10.0)]
    warnings = [line for line in gpu_lines(lines) if line.startswith("warning")]
    assert len(warnings) == 3
    assert "45 °C before training" in warnings[0]  # said once at the start
    assert all("gpu_max_pause" in w for w in warnings[1:])


def test_an_nvml_error_mid_run_turns_the_guard_off_and_training_finishes(fake_gpu, tiny_data, tmp_path):
    fake_gpu(temps=[60], fail_on_read=3)  # the read at step 6 fails
    lines = []
    summary, records = run(tiny_data, tmp_path, lines)
    assert summary["steps"] == 12
    assert [("gpu_temp_c" in r) for r in kind(records, "train")] == [True, True, False, False, False, False]
    (line,) = gpu_lines(lines)
    assert "off at step 6" in line and "GPU is lost" in line


def test_without_nvml_a_cpu_run_says_one_line_only_when_limits_were_asked_for(monkeypatch, tiny_data, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails
    lines = []
    summary, records = run(tiny_data, tmp_path, lines, gpu_max_temp=80.0)
    assert summary["steps"] == 12
    (line,) = gpu_lines(lines)
    assert line.startswith("gpu guard: off") and "not applied" in line
    assert not any(k.startswith("gpu_") for r in kind(records, "train") for k in r)
    assert gpu_lines(quiet_start(TrainConfig())) == []


def quiet_start(t: TrainConfig, device="cpu") -> list[str]:
    lines = []
    GpuGuard.start(t, torch.device(device), lines.append)
    return lines


@pytest.mark.parametrize("limits", [{}, {"gpu_max_temp": 80.0}])
def test_a_gpu_without_nvml_says_so_in_one_line(limits, monkeypatch):
    monkeypatch.setattr(gpu_guard, "gpu_uuid", lambda device: "GPU-fake")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    (line,) = quiet_start(TrainConfig(**limits))
    assert "pip install 'rain[gpu]'" in line
    no_driver = FakeNVML(init_error=FakeNVML.NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", no_driver)
    (line,) = quiet_start(TrainConfig(**limits))
    assert line.startswith("gpu guard: off") and "NVML Shared Library Not Found" in line


def test_setting_the_power_limit_without_permission_is_one_line(fake_gpu):
    nvml = fake_gpu(set_limit_error=FakeNVML.NVMLError_NoPermission("Insufficient Permissions"))
    lines = []
    guard = GpuGuard.start(TrainConfig(gpu_power_limit=250.0), torch.device("cpu"), lines.append)
    (line,) = lines
    assert "no permission" in line and "nvidia-smi -pl 250" in line
    assert nvml.power_limit_mw == 350_000 and guard.read(1)["gpu_temp_c"] == 60  # the guard goes on reading
    nvml.set_limit_error = None
    lines.clear()
    GpuGuard.start(TrainConfig(gpu_power_limit=250.0), torch.device("cpu"), lines.append)
    assert nvml.power_limit_mw == 250_000 and lines == [
        "gpu guard: board power limit set to 250 W (was 350 W; it holds until reboot, or nvidia-smi -pl 350)"]


def test_a_stop_request_ends_a_pause(fake_gpu, clock):
    fake_gpu(temps=[90])
    stop = SimpleNamespace(requested=None)
    guard = GpuGuard.start(TrainConfig(gpu_max_temp=80.0, gpu_check_every=1), torch.device("cpu"), lambda _: None)
    clock.on_sleep = lambda: setattr(stop, "requested", "SIGTERM")  # e.g. a SIGTERM during the first interval
    records = []
    guard.between_steps(5, SimpleNamespace(log=records.append), stop)
    assert [(r["step"], r["ended"], r["seconds"]) for r in records] == [(5, "stop", 2.0)]


def test_gpu_limits_are_checked_with_the_config():
    with pytest.raises(RainError, match="gpu_resume_temp"):
        GpuGuard.start(TrainConfig(gpu_max_temp=80.0, gpu_resume_temp=85.0), torch.device("cpu"), print)
    with pytest.raises(RainError, match="gpu_check_every"):
        load_config(None, ["train.max_steps=1", "train.gpu_check_every=0"])
