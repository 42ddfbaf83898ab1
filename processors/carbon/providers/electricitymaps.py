"""The ``electricitymaps`` provider: the latest carbon intensity of a zone.

``GET <url>/v3/carbon-intensity/latest?zone=<zone>&emissionFactorType=<type>`` with the
header ``auth-token: <token>`` answers::

    {"zone": "DE", "carbonIntensity": 302, "datetime": "2024-05-21T14:00:00.000Z",
     "updatedAt": "2024-05-21T14:32:11.123Z", "emissionFactorType": "lifecycle",
     "isEstimated": true, "estimationMethod": "TIME_SLICER_AVERAGE"}

``carbonIntensity`` is gCO2e/kWh (lifecycle factors by default), for the hour that
starts at ``datetime``; it can be null where the zone has no data.
"""

from __future__ import annotations

import urllib.parse

from otel_kepler.component import ComponentError

from ..config import ElectricityMapsConfig
from .base import DataError, Intensity, check_intensity
from .http import FetchError, HttpProvider, get_json, read_secret


class ElectricityMapsProvider(HttpProvider):
    def __init__(self, config: ElectricityMapsConfig) -> None:
        super().__init__("electricitymaps", config)
        self.config = config
        query = urllib.parse.urlencode(
            {"zone": config.zone, "emissionFactorType": config.emission_factor_type}
        )
        self.url = f"{config.url.rstrip('/')}/v3/carbon-intensity/latest?{query}"

    def check_credentials(self) -> None:
        try:
            token = self._token()
        except FetchError as err:
            raise ComponentError(f"electricitymaps: {err}") from None
        if not token:
            raise ComponentError(
                "electricitymaps: no API token: set token_file, or the environment variable "
                f"{self.config.token_env or '(token_env is empty)'}"
            )

    def _token(self) -> str:
        return read_secret(self.config.token_file, self.config.token_env)

    def fetch(self) -> Intensity:
        token = self._token()
        if not token:
            raise FetchError("no API token")
        body = get_json(self.url, {"auth-token": token}, self.timeout)
        return parse_latest(body, self.config.zone)


def parse_latest(body: object, zone: str) -> Intensity:
    """The intensity in a carbon-intensity/latest answer, or DataError naming the field."""
    where = f"electricitymaps zone {zone}"
    if not isinstance(body, dict):
        raise DataError(f"{where}: the answer is not a JSON object")
    value = body.get("carbonIntensity")
    if value is None:
        raise DataError(f"{where}: carbonIntensity is missing or null")
    if isinstance(value, str):  # the API sends a number; a string is not its shape
        raise DataError(f"{where}: intensity {value!r} is not a number")
    answered = body.get("zone")
    return Intensity(check_intensity(value, where), answered if isinstance(answered, str) else zone)
