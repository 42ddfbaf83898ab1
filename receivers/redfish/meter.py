"""Where each chassis reports its power, found once per login, and reading it.

Per chassis, the first of these that the BMC offers is used:

1. ``EnvironmentMetrics`` (Redfish 2020.4 and later): ``PowerWatts.Reading``;
2. ``PowerSubsystem`` (2020.4 and later): the sum of ``InputPowerWatts.Reading`` of the
   ``Metrics`` of every power supply in ``PowerSupplies``;
3. ``Power`` (deprecated in 2020.4, still the only one on many BMCs): the first entry of
   ``PowerControl`` with a ``PowerConsumedWatts`` property.

Discovery walks the tree (chassis collection, each chassis, its power resources); a
poll only GETs the resources found, one per chassis (one per power supply for 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .link import Link, RedfishError

ENVIRONMENT_METRICS = "EnvironmentMetrics"
POWER_SUBSYSTEM = "PowerSubsystem"
POWER_CONTROL = "PowerControl"


@dataclass(frozen=True, slots=True)
class PowerSource:
    """One chassis's power reading: which resource(s) hold it and the labels it gets."""

    chassis_id: str
    kind: str  # EnvironmentMetrics, PowerSubsystem or PowerControl
    paths: tuple[str, ...]  # GET each to read (several: one per power supply)
    member: int  # PowerControl: index of the entry read
    attributes: dict[str, str]

    def describe(self) -> str:
        return f"chassis {self.chassis_id}: {self.kind} at {', '.join(self.paths)}"


class Unreadable(RedfishError):
    """A resource answered, but not with a reading.

    ``rejected`` is the reason the reading is counted under: ``unreadable`` (not JSON,
    not an object) or ``not_a_number`` (the reading is text, NaN...).
    """

    def __init__(self, message: str, rejected: str = "unreadable") -> None:
        super().__init__("malformed", message)
        self.rejected = rejected


def _odata(doc: Any, *keys: str) -> str | None:
    """The ``@odata.id`` at ``doc[keys...]``, or None."""
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    if isinstance(doc, dict):
        target = doc.get("@odata.id")
        if isinstance(target, str) and target:
            return target
    return None


def _members(doc: dict[str, Any]) -> list[str]:
    members = doc.get("Members")
    if not isinstance(members, list):
        return []
    return [m for m in (_odata(item) for item in members) if m]


def discover(link: Link, wanted: list[str], bmc_id: str) -> list[PowerSource]:
    """Every chassis's power source (only those in ``wanted`` when it is not empty).

    Raises RedfishError("no power") when no chassis reports power, or one in ``wanted``
    does not exist or reports none.
    """
    found: list[PowerSource] = []
    seen: dict[str, str] = {}  # chassis id -> why it has no source ("" if it has one)
    listed: list[str] = []
    for path in link.chassis_paths():
        chassis = link.get(path)
        chassis_id = str(chassis.get("Id") or path.rstrip("/").rsplit("/", 1)[-1])
        listed.append(chassis_id)
        if wanted and chassis_id not in wanted:
            continue
        source = _find_source(link, chassis, chassis_id, bmc_id)
        seen[chassis_id] = "" if source else "no EnvironmentMetrics, PowerSubsystem or Power"
        if source is not None:
            found.append(source)
    for name in wanted:
        if name not in seen:
            known = ", ".join(sorted(listed)) or "none"
            raise RedfishError("no power", f"{link.where}: no chassis {name!r} (found: {known})")
        if seen[name]:
            raise RedfishError("no power", f"{link.where}: chassis {name!r} reports no power")
    if not found:
        names = ", ".join(sorted(seen)) or "none"
        raise RedfishError(
            "no power",
            f"{link.where}: no chassis reports power (chassis: {names}; looked for "
            "EnvironmentMetrics PowerWatts, PowerSubsystem power supplies, Power PowerControl)",
        )
    return found


def _find_source(
    link: Link, chassis: dict[str, Any], chassis_id: str, bmc_id: str
) -> PowerSource | None:
    def labels(kind: str, source_id: str, source_name: str) -> dict[str, str]:
        return {
            "bmc_id": bmc_id,
            "chassis_id": chassis_id,
            "source_id": source_id,
            "source_name": source_name,
            "source_type": kind,
        }

    env_path = _odata(chassis, ENVIRONMENT_METRICS)
    if env_path:
        env = _get_optional(link, env_path)
        if env is not None and isinstance(env.get("PowerWatts"), dict):
            name = str(env.get("Name") or ENVIRONMENT_METRICS)
            ident = str(env.get("Id") or ENVIRONMENT_METRICS)
            return PowerSource(
                chassis_id, ENVIRONMENT_METRICS, (env_path,), 0,
                labels(ENVIRONMENT_METRICS, ident, name),
            )  # fmt: skip
    subsystem_path = _odata(chassis, POWER_SUBSYSTEM)
    if subsystem_path:
        subsystem = _get_optional(link, subsystem_path)
        supplies = _odata(subsystem, "PowerSupplies") if subsystem else None
        collection = _get_optional(link, supplies) if supplies else None
        metrics: list[str] = []
        for member in _members(collection or {}):
            supply = _get_optional(link, member)
            target = _odata(supply, "Metrics") if supply else None
            if target:
                metrics.append(target)
        if subsystem is not None and metrics:
            ident = str(subsystem.get("Id") or POWER_SUBSYSTEM)
            name = str(subsystem.get("Name") or POWER_SUBSYSTEM)
            return PowerSource(
                chassis_id, POWER_SUBSYSTEM, tuple(metrics), 0,
                labels(POWER_SUBSYSTEM, ident, name),
            )  # fmt: skip
    power_path = _odata(chassis, "Power")
    if power_path:
        power = _get_optional(link, power_path)
        controls = power.get("PowerControl") if power else None
        if isinstance(controls, list):
            for index, control in enumerate(controls):
                if isinstance(control, dict) and "PowerConsumedWatts" in control:
                    ident = str(control.get("MemberId", index))
                    name = str(control.get("Name") or POWER_CONTROL)
                    return PowerSource(
                        chassis_id, POWER_CONTROL, (power_path,), index,
                        labels(POWER_CONTROL, ident, name),
                    )  # fmt: skip
    return None


def _get_optional(link: Link, path: str) -> dict[str, Any] | None:
    """The resource, or None where the BMC links one it does not serve (404)."""
    try:
        return link.get(path)
    except RedfishError as err:
        if err.status == 404:
            return None
        raise


def read(link: Link, source: PowerSource) -> float | None:
    """The chassis's power in watts now; None where the BMC has no reading (null).

    Raises Unreadable when a resource is not JSON or its reading is not a number, and
    RedfishError when the BMC cannot be used.
    """
    total: float | None = None
    for path in source.paths:
        try:
            doc = link.get(path)
        except RedfishError as err:
            if err.reason == "malformed":
                raise Unreadable(str(err)) from None
            raise
        value = _reading(doc, source)
        if value is None:
            if source.kind == POWER_SUBSYSTEM:
                return None  # a supply without a reading: the sum would be too small
            continue
        total = value if total is None else total + value
    return total


def _reading(doc: dict[str, Any], source: PowerSource) -> float | None:
    if source.kind == ENVIRONMENT_METRICS:
        where, value = "PowerWatts.Reading", _at(doc, "PowerWatts", "Reading")
    elif source.kind == POWER_SUBSYSTEM:
        where, value = "InputPowerWatts.Reading", _at(doc, "InputPowerWatts", "Reading")
    else:
        controls = doc.get("PowerControl")
        entry = (
            controls[source.member]
            if isinstance(controls, list) and len(controls) > source.member
            else None
        )
        where = f"PowerControl[{source.member}].PowerConsumedWatts"
        value = entry.get("PowerConsumedWatts") if isinstance(entry, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unreadable(
            f"chassis {source.chassis_id}: {where} is {value!r}, not a number of watts",
            "not_a_number",
        )
    if not math.isfinite(value):
        raise Unreadable(f"chassis {source.chassis_id}: {where} is {value!r}", "not_a_number")
    return float(value)


def _at(doc: dict[str, Any], *keys: str) -> Any:
    value: Any = doc
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
