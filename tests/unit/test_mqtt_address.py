import pytest
from pydantic import ValidationError

from service.config import MqttSettings
from service.errors import ConfigError
from service.mqtt import parse_broker_url


def test_url_credentials_and_default_ports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = parse_broker_url(MqttSettings(url="mqtts://ingest:p%40ss@broker.local"))
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker.local", 8883, True, "ingest", "p@ss")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    b = parse_broker_url(MqttSettings(url="mqtt://u:url@h:1884", password_file=secret))
    assert (b.port, b.tls, b.password) == (1884, False, "from-file")  # the file wins


@pytest.mark.parametrize("url", ["http://h:1883", "mqtt://:1883", "mqtt://h:notaport"])
def test_bad_urls_refused_clearly(url: str) -> None:
    # Refused when the settings are built (the one-line CLI error names SENSORCAST_MQTT__URL)...
    with pytest.raises(ValidationError, match=r"url"):
        MqttSettings(url=url)
    # ...and by the parser too, for settings made without validation.
    with pytest.raises(ConfigError, match=r"mqtt\.url"):
        parse_broker_url(MqttSettings.model_construct(url=url))
