"""Grid carbon intensity providers and the chain that tries them in order."""

from __future__ import annotations

import functools

from otel_kepler.component import HostSettings

from ..config import CarbonConfig, ProviderName
from .base import DataError, Intensity, Provider, ProviderChain, check_intensity
from .electricitymaps import ElectricityMapsProvider
from .kubernetes import in_cluster, node_region
from .region import RegionProvider, RegionRow, RegionTable, load_table, shipped_table
from .static import StaticProvider
from .timeseries import FileProvider, Series, parse_series
from .watttime import WattTimeProvider

__all__ = [
    "DataError",
    "ElectricityMapsProvider",
    "FileProvider",
    "Intensity",
    "Provider",
    "ProviderChain",
    "RegionProvider",
    "RegionRow",
    "RegionTable",
    "Series",
    "StaticProvider",
    "WattTimeProvider",
    "build_chain",
    "check_intensity",
    "load_table",
    "parse_series",
    "shipped_table",
]


def build_chain(config: CarbonConfig, host: HostSettings) -> ProviderChain:
    """The configured providers, in the configured order."""
    return ProviderChain([build_provider(name, config, host) for name in config.providers])


def build_provider(name: ProviderName, config: CarbonConfig, host: HostSettings) -> Provider:
    if name == "static":
        assert config.static.intensity is not None  # CarbonConfig.validate
        return StaticProvider(config.static.intensity, config.static.region)
    if name == "region":
        return _region_provider(config, host)
    if name == "file":
        return FileProvider(config.file)
    if name == "electricitymaps":
        return ElectricityMapsProvider(config.electricitymaps)
    return WattTimeProvider(config.watttime)


def _region_provider(config: CarbonConfig, host: HostSettings) -> RegionProvider:
    table = shipped_table()
    if config.region.region:
        return RegionProvider(table, config.region.region)
    if not config.region.detect:
        return RegionProvider(table, why_not="no region configured (detect is off)")
    if not in_cluster():
        return RegionProvider(table, why_not="no region configured, and not in Kubernetes")
    if not host.node_name:
        return RegionProvider(table, why_not="no region configured, and host.node_name is unset")
    return RegionProvider(table, detect=functools.partial(node_region, host.node_name))
