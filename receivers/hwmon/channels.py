"""What one tick makes of a chip's power, energy and gauge channels."""

from __future__ import annotations

from dataclasses import dataclass

from otel_kepler.data import Component

from ..counter import EnergyCounter, Rejected
from .sensors import Sensor

#: What some ACPI firmware reports when it has no reading: 0xFFFFFFFF mW, in uW.
NO_READING_UW = 0xFFFFFFFF * 1000


class Implausible(Rejected):
    """A power reading that cannot be physical; the message says what was read."""

    def __init__(self, message: str, reason: str = "implausible_power") -> None:
        super().__init__(reason, message)


@dataclass(slots=True)
class Gauge:
    sensor: Sensor
    name: str
    unit: str
    description: str
    divisor: float
    attributes: dict[str, str]


GAUGES: dict[str, tuple[str, str, str, str, float]] = {
    # kind: (hw.type, metric, unit, description, divisor from the sysfs unit)
    "temp": ("temperature", "hw.temperature", "Cel", "Temperature in degrees Celsius", 1e3),
    "fan": ("fan", "hw.fan.speed", "rpm", "Fan speed in revolutions per minute", 1.0),
    "in": ("voltage", "hw.voltage", "V", "Voltage measured by the sensor", 1e3),
}


@dataclass(slots=True)
class EnergyChannel:
    """An ``energyN_input`` counter in uJ, validated by the shared counter rule."""

    id: str  # chip/label, for logs
    component: Component
    zone: str
    sensor: Sensor
    counter: EnergyCounter

    @property
    def sensors(self) -> tuple[Sensor, ...]:
        return (self.sensor,)

    def miss(self) -> None:
        self.counter.fail()

    def measure(self, now: float, elapsed: float | None, max_watts: float) -> float | None:
        """Joules since the last good reading; None while priming; Rejected if impossible."""
        assert self.sensor.value is not None
        return self.counter.update(self.sensor.value, now)


@dataclass(slots=True)
class PowerChannel:
    """``powerN_average``, ``powerN_input`` (one sensor, uW) or ``inN`` x ``currM`` (mV x mA)."""

    id: str
    component: Component
    zone: str
    sensors: tuple[Sensor, ...]
    averaged: bool  # the chip averages: watts x tick; else trapezoid between ticks
    previous_w: float | None = None

    @property
    def source(self) -> str:
        return " x ".join(s.path for s in self.sensors)

    def miss(self) -> None:
        self.previous_w = None

    def measure(self, now: float, elapsed: float | None, max_watts: float) -> float | None:
        microwatts = 1
        for sensor in self.sensors:
            assert sensor.value is not None
            microwatts *= sensor.value
        try:
            watts = check_power(self.source, microwatts, max_watts)
        except Implausible:
            self.previous_w = None
            raise
        previous, self.previous_w = self.previous_w, watts
        if elapsed is None:
            return None
        if self.averaged or previous is None:
            return watts * elapsed
        return (previous + watts) / 2 * elapsed


def check_power(source: str, microwatts: int, max_watts: float) -> float:
    """Watts from a uW reading, or Implausible if it cannot be physical."""
    if microwatts == NO_READING_UW:
        raise Implausible(
            f"{source} reads {microwatts} uW (0xFFFFFFFF mW: the firmware has no reading)"
        )
    if microwatts < 0:
        raise Implausible(f"{source} reads a negative power, {microwatts} uW")
    watts = microwatts / 1e6
    if watts > max_watts:
        raise Implausible(f"{source} reads {watts:g} W > max_watts {max_watts:g}")
    return watts


Channel = EnergyChannel | PowerChannel
