"""The lab's plumbing: tracking, provenance, registry, sinks, and the tools (verify, reproduce,
sync, search, doctor, server, offline plots). Stages reach it only to start a run, log and register."""
