"""Speed only: how trainlab makes its programs fast on this hardware. Nothing here changes what is computed."""
