"""The ``redfish`` receiver: platform power from a server's BMC over Redfish, through sushy.

The BMC at ``endpoint`` (https by default, TLS verified against the system's CAs or
``ca_file``) is logged in to as ``username`` with the password from ``password``
(normally ``${env:REDFISH_PASSWORD}``) or ``password_file``: a Redfish session, else
HTTP basic (``auth``). Every chassis (or those listed in ``chassis``) is read from its
EnvironmentMetrics (``PowerWatts.Reading``), else its PowerSubsystem (sum of the power
supplies' ``InputPowerWatts.Reading``), else its Power resource
(``PowerControl[].PowerConsumedWatts``); see :mod:`.meter`.

A poller thread owns the connection: it polls every ``poll_interval``, each request
bounded by ``timeout``, logs in again after a failure with exponential back-off up to
``max_backoff``, and keeps the readings. ``collect()`` never touches the network: it
integrates the readings over the tick's real interval (see :mod:`.receiver`) and returns
one ``EnergyReading(component="platform", zone="platform", source="redfish")`` per
chassis, labelled ``bmc_id``, ``chassis_id``, ``source_id``, ``source_name`` and
``source_type``. Readings below 0 or above ``max_watts``, and readings that cannot be
read, are dropped, counted in ``Contribution.rejected`` and logged once.

The password never appears in a log line, an exception or a repr.

Modules: :mod:`.config` (the section, the password), :mod:`.link` (sushy connection,
errors), :mod:`.meter` (which resource holds each chassis's power), :mod:`.receiver`
(poller and integration).
"""

from __future__ import annotations

import importlib.metadata

from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver

from .config import RedfishConfig, env_hint, read_password
from .link import RedfishError, quiet_sushy
from .meter import discover, read
from .receiver import RedfishReceiver, open_link

__all__ = ["RedfishConfig", "RedfishReceiver", "doctor", "factory", "probe"]


def probe(config: RedfishConfig) -> Availability:
    """Log in, find every chassis's power and read it once, each request within ``timeout``."""
    quiet_sushy()
    try:
        read_password(config)
        link = open_link(config)
    except (ComponentError, RedfishError) as err:
        return Availability(False, str(err))
    try:
        sources = discover(link, config.chassis, config.bmc_id or config.where)
        values = []
        for source in sources:
            watts = read(link, source)
            shown = "no reading" if watts is None else f"{watts:g} W"
            values.append(f"chassis {source.chassis_id} {shown} ({source.kind})")
    except RedfishError as err:
        return Availability(False, str(err))
    finally:
        link.close()
    return Availability(True, f"{config.where}: {', '.join(values)}")


def doctor(host: HostSettings, config: RedfishConfig | None = None) -> Availability:
    """Without a config: is the Redfish client there? With one: a bounded probe of the BMC."""
    if config is not None and config.endpoint:
        return probe(config)
    try:
        version = importlib.metadata.version("sushy")
    except importlib.metadata.PackageNotFoundError:
        return Availability(False, "the sushy package is not installed (pip install sushy)")
    return Availability(
        True,
        f"sushy {version} installed; the BMC is checked when given a config with an "
        f"endpoint ({env_hint()})",
    )


def _create(name: str, config: RedfishConfig, host: HostSettings) -> RedfishReceiver:
    return RedfishReceiver(name, config, host)


factory: Factory[RedfishConfig, Receiver] = Factory(
    type="redfish",
    description="platform power from the BMC over Redfish (EnvironmentMetrics, "
    "PowerSubsystem or Power of every chassis)",
    config_class=RedfishConfig,
    create=_create,
    doctor=doctor,
    reading_labels=("bmc_id", "chassis_id", "source_id", "source_name", "source_type"),
    probe=probe,
)
