"""Config of the ``carbon`` processor: the provider chain, each provider, PUE and embodied.

Shaped in YAML as::

    processors:
      carbon:
        providers: [electricitymaps, file, static]   # first with a value for now wins
        pue: 1.2
        embodied: {total_kg: 1200, lifetime_years: 4}
        electricitymaps: {zone: DE, token_file: /var/run/secrets/em/token}
        file: {path: /var/lib/otel-kepler/forecast.csv, interpolation: linear}
        static: {intensity: 380}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from otel_kepler.schema import ConfigError, Duration

from .intensity import MAX_INTENSITY
from .regions import shipped_table

ProviderName = Literal["static", "region", "file", "electricitymaps", "watttime"]


@dataclass
class StaticConfig:
    """A fixed grid intensity."""

    intensity: float | None = field(
        default=None, metadata={"doc": "gCO2e/kWh; required when static is a provider"}
    )
    region: str = field(default="", metadata={"doc": "the region label the series carries"})

    def validate(self) -> None:
        if self.intensity is not None:
            _check_intensity("intensity", self.intensity)


@dataclass
class RegionConfig:
    """Annual average intensity of a country or cloud region, from the shipped table."""

    region: str = field(
        default="",
        metadata={
            "doc": "a country (DE), a cloud region (eu-west-1, europe-west1, westeurope) or "
            "kind:code (aws:eu-west-1); empty: the node's topology.kubernetes.io/region label"
        },
    )
    detect: bool = field(
        default=True,
        metadata={"doc": "with no region set, read the node's region label from Kubernetes"},
    )


@dataclass
class FileConfig:
    """A time series of intensities in a CSV or JSON file, reloaded when it changes."""

    path: str = field(default="", metadata={"doc": "the file; required when file is a provider"})
    format: Literal["auto", "csv", "json"] = field(
        default="auto", metadata={"doc": "auto: json for a .json file, else csv"}
    )
    interpolation: Literal["step", "linear"] = field(
        default="step",
        metadata={"doc": "step: a point holds until the next; linear: straight line between"},
    )
    max_gap: Duration = field(
        default=Duration(3600.0),
        metadata={
            "doc": "points further apart are a gap: the file is rejected; the last point of a "
            "step series holds this long"
        },
    )
    check_every: Duration = field(
        default=Duration(10.0), metadata={"doc": "how often the file is checked for changes"}
    )
    region: str = field(default="", metadata={"doc": "the region label the series carries"})

    def validate(self) -> None:
        _check_positive("max_gap", self.max_gap)
        _check_positive("check_every", self.check_every)


@dataclass
class HttpConfig:
    """Polling of an HTTP API, in a background thread: never on the tick's path."""

    cache_for: Duration = field(
        default=Duration(300.0), metadata={"doc": "an answer is reused this long, then asked again"}
    )
    max_age: Duration = field(
        default=Duration(3600.0),
        metadata={"doc": "an answer older than this no longer counts: the chain falls through"},
    )
    timeout: Duration = field(default=Duration(10.0), metadata={"doc": "timeout of one request"})
    backoff: Duration = field(
        default=Duration(30.0), metadata={"doc": "wait after a failure, doubled each time"}
    )
    max_backoff: Duration = field(
        default=Duration(1800.0), metadata={"doc": "the longest wait between retries"}
    )

    def validate(self) -> None:
        for name in ("cache_for", "max_age", "timeout", "backoff", "max_backoff"):
            _check_positive(name, getattr(self, name))
        if self.max_age < self.cache_for:
            raise ConfigError("max_age", "must be at least cache_for")
        if self.max_backoff < self.backoff:
            raise ConfigError("max_backoff", "must be at least backoff")


@dataclass
class ElectricityMapsConfig(HttpConfig):
    """Electricity Maps: the latest carbon intensity of a zone (v3 API)."""

    zone: str = field(default="", metadata={"doc": "the zone key (DE, FR, US-CAL-CISO...)"})
    url: str = field(default="https://api.electricitymap.org", metadata={"doc": "API base URL"})
    token_file: str = field(default="", metadata={"doc": "a file holding the API token"})
    token_env: str = field(
        default="ELECTRICITYMAPS_TOKEN",
        metadata={"doc": "else the environment variable holding it"},
    )
    emission_factor_type: Literal["lifecycle", "direct"] = field(
        default="lifecycle", metadata={"doc": "lifecycle (LCA) or direct (combustion) factors"}
    )


@dataclass
class WattTimeConfig(HttpConfig):
    """WattTime: the current marginal (or average) emissions rate of a grid region (v3 API)."""

    region: str = field(default="", metadata={"doc": "the WattTime region (CAISO_NORTH...)"})
    url: str = field(default="https://api.watttime.org", metadata={"doc": "API base URL"})
    signal_type: Literal["co2_moer", "co2_aoer"] = field(
        default="co2_moer", metadata={"doc": "co2_moer: marginal; co2_aoer: average"}
    )
    username: str = field(default="", metadata={"doc": "the account name"})
    username_env: str = field(
        default="WATTTIME_USER", metadata={"doc": "else the environment variable holding it"}
    )
    password_file: str = field(default="", metadata={"doc": "a file holding the password"})
    password_env: str = field(
        default="WATTTIME_PASSWORD", metadata={"doc": "else the environment variable holding it"}
    )


@dataclass
class EmbodiedConfig:
    """The node's embodied emissions, amortised over its lifetime (SCI's M)."""

    total_kg: float = field(
        default=0.0, metadata={"doc": "total embodied emissions of the node, kgCO2e; 0: none"}
    )
    lifetime_years: float = field(
        default=4.0, metadata={"doc": "expected lifespan in years of 365 days"}
    )

    def validate(self) -> None:
        if not math.isfinite(self.total_kg) or self.total_kg < 0:
            raise ConfigError("total_kg", "must be 0 or more")
        _check_positive("lifetime_years", self.lifetime_years)


@dataclass
class CarbonConfig:
    """Grams of CO2e from joules: per tick, that tick's joules x the intensity in force."""

    providers: list[ProviderName] = field(
        default_factory=lambda: ["region"],
        metadata={"doc": "the chain, in order: the first that has a value for now wins"},
    )
    pue: float = field(
        default=1.0, metadata={"doc": "facility overhead (PUE) applied to energy first"}
    )
    platform_zones: list[str] = field(
        default_factory=lambda: ["platform", "battery"],
        metadata={
            "doc": "platform zones that measure the whole node, by preference: where one "
            "reports, it is the node's energy instead of CPU + DRAM + GPUs"
        },
    )
    embodied: EmbodiedConfig = field(default_factory=EmbodiedConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    file: FileConfig = field(default_factory=FileConfig)
    electricitymaps: ElectricityMapsConfig = field(default_factory=ElectricityMapsConfig)
    watttime: WattTimeConfig = field(default_factory=WattTimeConfig)

    def validate(self) -> None:
        if not self.providers:
            raise ConfigError("providers", "name at least one provider")
        if len(set(self.providers)) != len(self.providers):
            raise ConfigError("providers", "a provider is listed twice")
        if not math.isfinite(self.pue) or self.pue < 1.0:
            raise ConfigError("pue", f"must be 1.0 or more, got {self.pue:g}")
        used = set(self.providers)
        if "static" in used and self.static.intensity is None:
            raise ConfigError("static.intensity", "is required when static is a provider")
        if "file" in used and not self.file.path:
            raise ConfigError("file.path", "is required when file is a provider")
        if "electricitymaps" in used and not self.electricitymaps.zone:
            raise ConfigError(
                "electricitymaps.zone", "is required when electricitymaps is a provider"
            )
        if "watttime" in used and not self.watttime.region:
            raise ConfigError("watttime.region", "is required when watttime is a provider")
        if "region" in used and self.region.region:
            if shipped_table().find(self.region.region) is None:
                raise ConfigError(
                    "region.region",
                    f'unknown region "{self.region.region}": not in the shipped table '
                    "(docs/carbon.md lists it); use static for another grid",
                )


def _check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be more than 0, got {value:g}")


def _check_intensity(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0 or value > MAX_INTENSITY:
        raise ConfigError(name, f"must be 0 to {MAX_INTENSITY:g} gCO2e/kWh, got {value:g}")
