"""The GPU guard: reads the training GPU through NVML (temperature, power, clocks, memory, throttle reasons) into
the train records, and pauses between steps while the GPU is hotter, or draws more power, than the config allows.

    guard = GpuGuard.start(cfg.train, device, log)   # off (one line at most) without NVML or a GPU
    entry.update(guard.read(step))                   # at log steps: gpu_temp_c, gpu_power_w, ...
    guard.between_steps(step, metrics, stop)         # pauses while a limit is exceeded, logs a guard record

It reacts to readings, never to a timer: pausing every N steps switches the load on and off, and those load
steps are power spikes (the 150M MoE reference run on an RTX 3090 lost its power supply that way). Without NVML
(no nvidia-ml-py, no driver, a CPU run) the guard is off and says so once; an NVML error mid-run turns it off and
training goes on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from time import monotonic, sleep  # module names, so tests can give the guard a fake clock

import torch

from rain.config import TrainConfig
from rain.errors import RainError

POLL_SECONDS = 2.0  # a pause re-reads the GPU this often
RESUME_BELOW = 5.0  # train.gpu_resume_temp = 0: resume this many °C under train.gpu_max_temp
INSTALL = "pip install 'rain[gpu]' (nvidia-ml-py)"

# NVML's clock event ("throttle") reason bits, nvml.h's nvmlClocksEventReason*, by the names the records use.
THROTTLE_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int) -> list[str]:
    """The names of the reasons set in an NVML reason mask; bits NVML added since, as one hex number."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_REASONS)
    return names + ([hex(rest)] if rest else [])


def _throttle(nvml, handle) -> list[str]:
    # nvidia-ml-py renamed "throttle reasons" to "clock event reasons"; older releases have only the first name.
    get = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return throttle_names(get(handle))


# Each reading: its name in the train records and how NVML gives it.
READERS = {
    "gpu_temp_c": lambda nvml, h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
    "gpu_power_w": lambda nvml, h: round(nvml.nvmlDeviceGetPowerUsage(h) / 1000, 1),  # NVML reports milliwatts
    "gpu_sm_clock_mhz": lambda nvml, h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
    "gpu_mem_clock_mhz": lambda nvml, h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
    "gpu_mem_used_mib": lambda nvml, h: nvml.nvmlDeviceGetMemoryInfo(h).used // 2**20,
    "gpu_throttle": _throttle,
}


def gpu_uuid(device: torch.device) -> str | None:
    """NVML's name for the training device ("GPU-<uuid>"), None off CUDA. By UUID rather than index: CUDA numbers
    GPUs after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, NVML does not."""
    if device.type != "cuda":
        return None
    return f"GPU-{torch.cuda.get_device_properties(device).uuid}"


def open_nvml(uuid: str):
    """(pynvml, the device's handle, None), or (None, None, why NVML cannot be used)."""
    try:
        import pynvml
    except ImportError:
        return None, None, f"NVML is not installed: {INSTALL}"
    try:
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid.encode()), None
    except pynvml.NVMLError as exc:
        return None, None, f"NVML failed: {exc}"


@dataclass(frozen=True)
class Limits:
    max_temp: float = 0.0  # °C, 0: none
    resume_temp: float = 0.0
    max_power: float = 0.0  # W, 0: none
    check_every: int = 10
    max_pause: float = 300.0

    @classmethod
    def from_config(cls, t: TrainConfig) -> Limits:
        resume = t.gpu_resume_temp or t.gpu_max_temp - RESUME_BELOW
        if t.gpu_max_temp and resume >= t.gpu_max_temp:
            raise RainError(f"train.gpu_resume_temp ({resume:g}) must be below train.gpu_max_temp ({t.gpu_max_temp:g})")
        return cls(t.gpu_max_temp, resume, t.gpu_max_power, t.gpu_check_every, t.gpu_max_pause)

    @property
    def pausing(self) -> bool:
        return self.max_temp > 0 or self.max_power > 0

    def exceeded(self, r: dict) -> str | None:
        """Why the readings call for a pause, or None."""
        if self.max_temp and r.get("gpu_temp_c", -math.inf) > self.max_temp:
            return f"{r['gpu_temp_c']} °C is over train.gpu_max_temp ({self.max_temp:g} °C)"
        if self.max_power and r.get("gpu_power_w", 0.0) > self.max_power:
            return f"{r['gpu_power_w']} W is over train.gpu_max_power ({self.max_power:g} W)"
        return None

    def cooled(self, r: dict) -> bool:
        hot = self.max_temp and r.get("gpu_temp_c", -math.inf) >= self.resume_temp
        drawing = self.max_power and r.get("gpu_power_w", 0.0) >= self.max_power
        return not (hot or drawing)

    def describe(self) -> str:
        temp = f"over {self.max_temp:g} °C (resuming below {self.resume_temp:g} °C)" if self.max_temp else ""
        power = f"over {self.max_power:g} W" if self.max_power else ""
        return " or ".join(filter(None, (temp, power)))


class GpuGuard:
    """NVML readings of one GPU and the pauses they call for; with nvml None it is off and does nothing."""

    def __init__(self, nvml=None, handle=None, limits: Limits = Limits(), log=print):
        self.nvml, self.handle, self.limits, self.log = nvml, handle, limits, log
        self.readers = dict(READERS)
        self._last: tuple[int | None, dict] = (None, {})  # (step, its readings): one NVML read per step

    @classmethod
    def start(cls, t: TrainConfig, device: torch.device, log=print) -> GpuGuard:
        """The guard for a run on `device`, with cfg.train's limits. Off, in one line when it matters (limits
        asked for, or a GPU left unwatched), without a GPU or NVML."""
        limits = Limits.from_config(t)
        asked = limits.pausing or t.gpu_power_limit > 0
        uuid = gpu_uuid(device)
        why = f"training on {device.type}: no NVIDIA GPU to watch" if uuid is None else None
        nvml, handle = None, None
        if uuid is not None:
            nvml, handle, why = open_nvml(uuid)
        if nvml is None:
            if asked or uuid is not None:
                log(f"gpu guard: off ({why})" + ("; the train.gpu_* limits are not applied" if asked else ""))
            return cls(log=log)
        guard = cls(nvml, handle, limits, log)
        if t.gpu_power_limit:
            guard.set_power_limit(t.gpu_power_limit)
        if limits.pausing:
            guard.check_start()
        return guard

    @property
    def on(self) -> bool:
        return self.nvml is not None

    def read(self, step: int | None = None) -> dict:
        """The GPU's readings now (the same ones again within one step); {} when the guard is off. A reading this
        GPU does not support is left out; any other NVML error turns the guard off."""
        if not self.on:
            return {}
        if step is not None and self._last[0] == step:
            return self._last[1]
        readings = {}
        for name, reader in list(self.readers.items()):
            try:
                readings[name] = reader(self.nvml, self.handle)
            except AttributeError:  # an nvidia-ml-py too old for this reading
                del self.readers[name]
                continue
            except self.nvml.NVMLError as exc:
                if isinstance(exc, getattr(self.nvml, "NVMLError_NotSupported", ())):  # not on this GPU
                    del self.readers[name]
                    continue
                self._turn_off(step, exc)
                return {}
        self._last = (step, readings)
        return readings

    def _turn_off(self, step: int | None, exc: Exception) -> None:
        when = f" at step {step}" if step is not None else ""
        self.log(f"gpu guard: off{when}: NVML failed ({exc}); training goes on without GPU readings or limits")
        self.nvml = None

    def check_start(self) -> None:
        """One line saying what the guard does, and one warning where a limit cannot work as set."""
        lim, reading = self.limits, self.read()
        if not self.on:
            return
        self.log(f"gpu guard: pausing between steps while the GPU is {lim.describe()}, checked every "
                 f"{lim.check_every} steps")
        for limit, name, what in ((lim.max_temp, "gpu_temp_c", "temperature"), (lim.max_power, "gpu_power_w", "power")):
            if limit and name not in reading:
                self.log(f"warning: gpu guard: this GPU does not report its {what}, so that limit is not applied")
        if lim.max_temp and reading.get("gpu_temp_c", -math.inf) >= lim.resume_temp:
            self.log(f"warning: gpu guard: the GPU is at {reading['gpu_temp_c']} °C before training, not below the "
                     f"resume threshold ({lim.resume_temp:g} °C); if it idles this warm every pause lasts "
                     f"train.gpu_max_pause ({lim.max_pause:g} s): raise train.gpu_max_temp")

    def set_power_limit(self, watts: float) -> None:
        """Cap the board's power (needs root; it holds until the driver reloads). Refused: one line, go on."""
        nvml = self.nvml
        try:
            before = nvml.nvmlDeviceGetPowerManagementLimit(self.handle) / 1000
            nvml.nvmlDeviceSetPowerManagementLimit(self.handle, int(watts * 1000))
        except nvml.NVMLError as exc:
            if isinstance(exc, getattr(nvml, "NVMLError_NoPermission", ())):
                self.log(f"gpu guard: no permission to set the power limit to {watts:g} W (as root: "
                         f"nvidia-smi -pl {watts:g}); going on at the board's own limit")
            else:
                self.log(f"gpu guard: could not set the power limit to {watts:g} W ({exc}); going on at the "
                         "board's own limit")
            return
        self.log(f"gpu guard: board power limit set to {watts:g} W (was {before:g} W; it holds until reboot, "
                 f"or nvidia-smi -pl {before:g})")

    def between_steps(self, step: int, metrics=None, stop=None) -> None:
        """Every train.gpu_check_every steps, with a limit set: pause while a reading exceeds it, and log the pause
        as a guard record into `metrics`. A stop request (stop.requested) ends a pause early."""
        if not self.on or not self.limits.pausing or step % self.limits.check_every:
            return
        reading = self.read(step)
        reason = self.limits.exceeded(reading)
        if reason is not None:
            record = self._pause(step, reason, reading, stop)
            if metrics is not None:
                metrics.log(record)

    def _pause(self, step: int, reason: str, reading: dict, stop) -> dict:
        """Sleep in short intervals, re-reading, until the GPU is below the resume thresholds, NVML fails, a stop
        is requested, or train.gpu_max_pause has passed (then warn and go on)."""
        lim = self.limits
        self.log(f"gpu guard: {reason} after step {step}; pausing (at most {lim.max_pause:g} s)")
        began, now, ended = monotonic(), reading, "cooled"
        while True:
            sleep(POLL_SECONDS)
            now = self.read()
            waited = monotonic() - began
            if not self.on:
                ended = "nvml_off"
            elif lim.cooled(now):
                self.log(f"gpu guard: resuming after {waited:.0f} s ({_describe(now)})")
            elif stop is not None and stop.requested:
                ended = "stop"
            elif waited >= lim.max_pause:
                ended = "max_pause"
                self.log(f"warning: gpu guard: still {_describe(now)} after {waited:.0f} s (train.gpu_max_pause); "
                         "going on. A limit this GPU cannot get under even idle: raise it")
            else:
                continue
            return {"kind": "guard", "event": "gpu_pause", "step": step, "reason": reason, "ended": ended,
                    "seconds": round(waited, 1), "before": reading, "after": now}


def _describe(r: dict) -> str:
    return ", ".join(f"{r[k]}{unit}" for k, unit in (("gpu_temp_c", " °C"), ("gpu_power_w", " W")) if k in r)
