"""The [neuronbrowser] section: defaults and the errors for bad values."""

from __future__ import annotations

import pytest

from hortacloud.config import ConfigError, load_config


def test_neuronbrowser_defaults() -> None:
    nb = load_config().neuronbrowser
    assert nb.conn_id == "hortacloud_neuronbrowser"
    assert nb.schedule == "0 2 * * *"
    assert nb.locations == ("Finished_Neurons", "tracing_complete")
    assert nb.neuron_prefix == "G-"
    assert nb.min_share == 0.9
    assert nb.read_timeout_seconds >= 60  # the sample-api is slow
    assert nb.neurons_json_requires == ("transform.txt", "ktx/block_8_xy_.ktx", "default.0.tif")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[neuronbrowser]\nmin_share = 1.5\n", "neuronbrowser.min_share"),
        ('[neuronbrowser]\nlocations = ["carveouts"]\n', "neuronbrowser.locations.0"),
        ("[neuronbrowser]\nlocations = []\n", "neuronbrowser.locations"),
        ("[neuronbrowser]\nread_timeout_seconds = 0\n", "neuronbrowser.read_timeout_seconds"),
    ],
)
def test_bad_neuronbrowser_values_name_the_key(site_config, text: str, key: str) -> None:
    site_config(text)
    with pytest.raises(ConfigError, match=rf"key '{key}'"):
        load_config()
