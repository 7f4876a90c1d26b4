"""The data: MSD datasets, their fingerprint, the `auto` plan, transforms and loaders."""
