"""Every card and report template the toolkit renders (Jinja). Installed as `axdata.hub_cards`."""
