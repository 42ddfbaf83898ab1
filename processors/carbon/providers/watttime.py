"""The ``watttime`` provider: the current emissions rate of a WattTime region (API v3).

1. ``GET <url>/login`` with HTTP basic auth (user name, password) answers
   ``{"token": "<jwt>"}``; the token is valid for 30 minutes. It is renewed after
   25 minutes, or at once when the API refuses it (401).
2. ``GET <url>/v3/forecast?region=<region>&signal_type=co2_moer&horizon_hours=0`` with
   ``Authorization: Bearer <token>`` answers the current 5-minute value::

       {"data": [{"point_time": "2024-05-21T14:05:00+00:00", "value": 870.0}],
        "meta": {"region": "CAISO_NORTH", "signal_type": "co2_moer",
                 "units": "lbs_co2_per_mwh", "generated_at": "...", ...}}

   (``/v3/signal-index`` gives only a 0-100 percentile, not an intensity; the
   forecast's first point is the real-time value.)

MOER (marginal operating emissions rate) and AOER are in pounds of CO2 per MWh:
1 lb/MWh = 453.59237 g / 1000 kWh = 0.45359237 g/kWh, so 1000 lbs/MWh = 453.6 gCO2/kWh.
"""

from __future__ import annotations

import base64
import time
import urllib.parse

from otel_kepler.component import ComponentError

from ..config import WattTimeConfig
from .base import DataError, Intensity, check_intensity
from .http import FetchError, HttpProvider, get_json, read_secret

#: grams per pound / kWh per MWh
G_PER_KWH_PER_LB_PER_MWH = 453.59237 / 1000.0
TOKEN_LIFETIME = 25 * 60.0  # renewed before the API's 30 minutes run out
UNITS = {"lbs_co2_per_mwh": G_PER_KWH_PER_LB_PER_MWH, "g_co2_per_kwh": 1.0}


class WattTimeProvider(HttpProvider):
    def __init__(self, config: WattTimeConfig) -> None:
        super().__init__("watttime", config)
        self.config = config
        base = config.url.rstrip("/")
        self.login_url = f"{base}/login"
        query = urllib.parse.urlencode(
            {"region": config.region, "signal_type": config.signal_type, "horizon_hours": 0}
        )
        self.signal_url = f"{base}/v3/forecast?{query}"
        self._token = ""
        self._token_at = 0.0

    def check_credentials(self) -> None:
        try:
            user, password = self._credentials()
        except FetchError as err:
            raise ComponentError(f"watttime: {err}") from None
        if not user or not password:
            missing = "user name (username or " if not user else "password (password_file or "
            env = self.config.username_env if not user else self.config.password_env
            raise ComponentError(f"watttime: no {missing}the environment variable {env})")

    def _credentials(self) -> tuple[str, str]:
        user = self.config.username or read_secret("", self.config.username_env)
        return user, read_secret(self.config.password_file, self.config.password_env)

    def login(self) -> str:
        user, password = self._credentials()
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        try:
            body = get_json(self.login_url, {"Authorization": f"Basic {basic}"}, self.timeout)
        except FetchError as err:
            raise FetchError(f"login: {err}", err.status, err.retry_after) from None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise DataError("watttime login: the answer has no token")
        self._token, self._token_at = token, time.monotonic()
        return token

    def fetch(self) -> Intensity:
        token = self._token
        if not token or time.monotonic() - self._token_at > TOKEN_LIFETIME:
            token = self.login()
        try:
            body = self._signal(token)
        except FetchError as err:
            if err.status != 401:
                raise
            body = self._signal(self.login())  # the token expired early: log in once more
        return parse_signal(body, self.config.region)

    def _signal(self, token: str) -> object:
        return get_json(self.signal_url, {"Authorization": f"Bearer {token}"}, self.timeout)


def parse_signal(body: object, region: str) -> Intensity:
    """gCO2e/kWh from a v3 data or forecast answer (its first point), or DataError."""
    where = f"watttime region {region}"
    if not isinstance(body, dict):
        raise DataError(f"{where}: the answer is not a JSON object")
    meta = body.get("meta")
    units = meta.get("units") if isinstance(meta, dict) else None
    if units not in UNITS:
        raise DataError(f"{where}: unexpected units {units!r} (expected lbs_co2_per_mwh)")
    data = body.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise DataError(f"{where}: the answer has no data point")
    value = data[0].get("value")
    where = f"{where} row 1"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{where}: value {value!r} is not a number")
    if value < 0:
        raise DataError(f"{where}: value {value:g} {units} is negative")
    grams = check_intensity(value * UNITS[str(units)], where)
    answered = meta.get("region") if isinstance(meta, dict) else None
    return Intensity(grams, answered if isinstance(answered, str) else region)
