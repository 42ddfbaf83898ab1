"""The ``ipmi`` receiver: platform power from the BMC, through pyghmi.

The BMC is read in-band (``/dev/ipmi0``, when ``endpoint`` is empty) or over the
network (IPMI 2.0 / RMCP+ to ``endpoint``:``port`` as ``username``, with the password
from ``password_file``, ``password_env``, or, with a warning, ``password``):

1. DCMI Get Power Reading (netfn 0x2c, command 0x02): the platform's power in watts,
   reported as zone ``platform``;
2. where the BMC answers it with an error (0xC1 "invalid command" on BMCs without
   DCMI), the SDR sensors whose unit is watts, each reported as a zone named by its
   sensor name (``method`` forces either).

A poller thread owns the session: it polls every ``interval`` with a deadline of
``timeout`` per login and request, reconnects with exponential back-off (``interval``
doubled up to ``max_backoff``) and keeps the readings. ``collect()`` never touches the
network: it integrates the readings over the tick's real interval (see
:mod:`.receiver`) and returns ``EnergyReading(component="platform", zone, source="ipmi")``,
which become ``kepler.node.platform.joules`` and ``.watts``. A reading older than
``max_age`` no longer counts. Readings below 0 or above ``max_watts`` are dropped,
counted in ``Contribution.rejected`` and logged once per zone.

The password never appears in a log line, an exception or a repr.

Modules: :mod:`.config` (the section, the password), :mod:`.link` (pyghmi sessions with
deadlines), :mod:`.meter` (DCMI and SDR), :mod:`.receiver` (poller and integration).
"""

from __future__ import annotations

import logging
import os

from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver

from . import link as links
from .config import IpmiConfig, read_password
from .link import LinkError
from .meter import find_meter
from .receiver import IpmiReceiver, held_energy, open_link

__all__ = ["IpmiConfig", "IpmiReceiver", "doctor", "factory", "held_energy", "probe"]

log = logging.getLogger(__name__)


def probe(config: IpmiConfig) -> Availability:
    """Log in, find the power reading and read it once, each step within ``timeout``."""
    if config.endpoint:
        try:
            read_password(config)
        except ComponentError as err:
            return Availability(False, str(err))
    try:
        link = open_link(config)
    except LinkError as err:
        return Availability(False, str(err))
    try:
        meter = find_meter(link, config.method, config.sensors, {})
        readings = meter.read(link)
    except LinkError as err:
        return Availability(False, str(err))
    finally:
        link.close()
    values = ", ".join(
        f"{zone} {'no reading' if watts is None else f'{watts:g} W'}"
        for zone, watts in readings.items()
    )
    return Availability(True, f"{config.where}: {values}, by {meter.describe()}")


def doctor(host: HostSettings, config: IpmiConfig | None = None) -> Availability:
    """In-band: is there a local BMC? With a config naming an endpoint: a bounded probe."""
    if config is not None and config.endpoint:
        return probe(config)
    device = links.DEVICE
    if not os.path.exists(device):
        return Availability(
            False,
            f"{device} does not exist: {links.NO_DEVICE_FIX} (doctor checks an endpoint when "
            "given the config)",
        )
    if not os.access(device, os.R_OK | os.W_OK):
        return Availability(False, f"{device}: permission denied (in-band IPMI needs root)")
    return probe(config or IpmiConfig())


def _create(name: str, config: IpmiConfig, host: HostSettings) -> IpmiReceiver:
    if config.password:
        log.warning(
            "receivers.%s.password: the BMC password is written in the config; prefer "
            "password_file or password_env",
            name,
        )
    return IpmiReceiver(name, config, host)


factory: Factory[IpmiConfig, Receiver] = Factory(
    type="ipmi",
    description="platform power from the BMC over IPMI (DCMI power reading, else SDR watts)",
    config_class=IpmiConfig,
    create=_create,
    doctor=doctor,
    probe=probe,
)
