"""InfluxDB 2.x / 3.x: writes through influxdb-client (``/api/v2/write``), reads through the
InfluxQL ``/query`` compatibility endpoint with the same token.

Not tested against a real 2.x/3.x server (none can run here): everything except the write
call is the 1.x code that the integration tests prove against influxd 1.6.7, and the write
call's HTTP status is classified by ``rejections.error_for_status`` like 1.x's (a unit test
drives it with influxdb-client's own ``ApiException``). A 2.x bucket needs a DBRP mapping
for InfluxQL reads (InfluxDB 3 Core maps the database name itself).
"""

from __future__ import annotations

from typing import Any

from service.errors import StoreError
from service.store.influx1 import InfluxQLStore
from service.store.rejections import error_for_status


class Influx2Store(InfluxQLStore):
    def __init__(
        self, base_url: str, bucket: str, org: str, token: str, measurement: str, timeout_s: float
    ) -> None:
        super().__init__(
            base_url, bucket, measurement, timeout_s, headers={"Authorization": f"Token {token}"}
        )
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._org = org
        self._client: Any = InfluxDBClient(url=base_url, token=token, org=org, timeout=int(timeout_s * 1000))
        self._write_api: Any = self._client.write_api(write_options=SYNCHRONOUS)

    def write_lines(self, body: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(
                bucket=self.database, org=self._org, record=body, write_precision=WritePrecision.NS
            )
        except ApiException as e:
            # An HTTP answer: classified like 1.x's (400/413/422 permanent, 401/403 credentials,
            # 5xx/429 transient). ``message`` is the server's JSON "message", else the raw body.
            if e.status:
                raise error_for_status(int(e.status), str(e.message or e.body or e.reason), "influxdb2 write") from e
            raise StoreError(f"influxdb2 write failed: {e.message or e.reason}") from e
        except Exception as e:  # urllib3 and socket errors, timeouts: transient
            raise StoreError(f"influxdb2 write failed: {e!r}") from e

    def buckets_api(self) -> Any:
        """influxdb-client's BucketsApi (service/store/retention.py sets the bucket's retention)."""
        return self._client.buckets_api()

    def close(self) -> None:
        super().close()
        self._client.close()
