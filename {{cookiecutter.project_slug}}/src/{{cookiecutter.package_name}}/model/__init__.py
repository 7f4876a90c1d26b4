"""The network built from the `model` config group, and the card that rebuilds it."""
