"""Sources and wire protocols: sim, replay, Alpaca; OCC symbols."""
